// Dataset page: add images to a class (drop or picker), relabel or remove an image, show
// more of a class, download a version. Every change is a new dataset version.
import { api, download, el, flash, flashAfterReload, guarded, upload } from "./common.js";

const root = document.getElementById("dataset");
const name = root.dataset.name;
const classes = JSON.parse(root.dataset.classes);
const base = `/datasets/${encodeURIComponent(name)}`;
const editable = root.dataset.version === root.dataset.latest;

function setVersion(version) {
  root.dataset.version = root.dataset.latest = String(version);
  document.getElementById("shown-version").textContent = `${version} (latest)`;
  const train = document.getElementById("train-from");
  train.href = `/console/train?dataset=${encodeURIComponent(name)}&dataset_version=${version}`;
  const exportButton = document.getElementById("export");
  exportButton.dataset.version = String(version);
  exportButton.textContent = `Download version ${version} (.zip)`;
}

function section(label) {
  return [...document.querySelectorAll(".class-section")].find((s) => s.dataset.class === label);
}

function bump(label, delta) {
  const count = section(label)?.querySelector("[data-count]");
  if (count) count.textContent = String(Number(count.textContent) + delta);
  const total = document.getElementById("image-count");
  if (delta && label === null) total.textContent = String(Number(total.textContent) + delta);
}

async function addFiles(label, files, button) {
  if (!files.length) return;
  await guarded(button, async () => {
    const body = new FormData();
    for (const f of files) body.append("file", f, f.name);
    const change = await upload(
      `${base}/images?label=${encodeURIComponent(label)}&source=console`,
      body,
      () => {},
    );
    const skipped = change.skipped.map((s) => `${s.path}: ${s.reason}`).join("; ");
    const note = `Added ${change.added} image(s) to ${label} (version ${change.version}).`;
    flashAfterReload(skipped ? `${note} Skipped ${skipped}` : note);
    location.reload();
  });
}

function imageItem(item, label) {
  const select = el(
    "select",
    {
      class: "relabel",
      "data-image": item.id,
      "data-needs": "train",
      "aria-label": `Class of ${item.filename}`,
    },
    ...classes.map((c) => el("option", { value: c, selected: c === label, text: c })),
  );
  return el(
    "li",
    { "data-image": item.id },
    el("img", { src: item.thumbnail_url, alt: item.filename, loading: "lazy", width: 96, height: 96 }),
    el("span", { title: item.filename, text: item.filename }),
    editable ? select : null,
    editable
      ? el("button", {
          type: "button",
          class: "remove danger",
          "data-needs": "train",
          "data-image": item.id,
          "aria-label": `Remove ${item.filename}`,
          text: "Remove",
        })
      : null,
  );
}

document.addEventListener("change", async (e) => {
  const target = e.target;
  if (target.matches("select.relabel")) {
    const li = target.closest("li");
    const from = target.closest(".class-section").dataset.class;
    const to = target.value;
    await guarded(target, async () => {
      const change = await api(`${base}/images/${target.dataset.image}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label: to }),
      });
      section(to).querySelector("ul.images").prepend(li);
      bump(from, -1);
      bump(to, 1);
      setVersion(change.version);
      flash(`Moved to ${to} (version ${change.version}).`, "ok");
    });
    if (target.closest(".class-section").dataset.class !== target.value) {
      target.value = target.closest(".class-section").dataset.class; // refused: undo
    }
  } else if (target.matches("input.add-files")) {
    await addFiles(target.dataset.class, [...target.files], null);
  }
});

document.addEventListener("click", async (e) => {
  const target = e.target;
  if (target.matches("button.remove")) {
    const li = target.closest("li");
    const label = target.closest(".class-section").dataset.class;
    await guarded(target, async () => {
      const change = await api(`${base}/images/${target.dataset.image}`, { method: "DELETE" });
      li.remove();
      bump(label, -1);
      bump(null, -1);
      setVersion(change.version);
      flash(`Removed (version ${change.version}; older versions keep the image).`, "ok");
    });
  } else if (target.matches("button.more")) {
    await guarded(target, async () => {
      const offset = Number(target.dataset.offset);
      const page = await api(
        `${base}/images?version=${root.dataset.version}&label=${encodeURIComponent(target.dataset.class)}` +
          `&offset=${offset}&limit=${root.dataset.page}`,
      );
      const list = section(target.dataset.class).querySelector("ul.images");
      for (const item of page.items) list.append(imageItem(item, target.dataset.class));
      target.dataset.offset = String(offset + page.items.length);
      if (offset + page.items.length >= page.total) target.remove();
    });
  } else if (target.id === "export") {
    const version = target.dataset.version;
    await guarded(target, () => download(`${base}/versions/${version}/export`, `${name}-v${version}.zip`));
  }
});

for (const zone of document.querySelectorAll("[data-drop]")) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    addFiles(zone.dataset.drop, [...e.dataTransfer.files], null);
  });
}

const addClass = document.getElementById("add-class");
addClass?.addEventListener("submit", (e) => {
  e.preventDefault();
  const label = document.getElementById("class-name").value.trim();
  addFiles(label, [...document.getElementById("class-files").files], addClass.querySelector("button"));
});
