// Model page: promote, roll back, delete; a version's metrics, confusion matrix (each cell
// opens its validation images), curves, and a comparison with another version.
import { api, download, el, flash, guarded, pct } from "./common.js";
import { compareTable, confusionMatrix, Curves, perClassTable } from "./metrics.js";

const model = JSON.parse(document.getElementById("model-data").textContent);
const shownVersion = JSON.parse(document.getElementById("shown-version").textContent);
const byVersion = Object.fromEntries(model.version_details.map((v) => [v.version, v]));
const shown = byVersion[shownVersion];
const base = `/models/${encodeURIComponent(model.name)}`;

for (const button of document.querySelectorAll("button.activate")) {
  button.addEventListener("click", () => {
    const v = Number(button.dataset.version);
    const verb = model.active_version && v < model.active_version ? "Roll back" : "Promote";
    const what = `${verb}: serve ${model.name} version ${v} instead of version ${model.active_version}?`;
    if (!confirm(what)) return;
    guarded(button, async () => {
      button.textContent = "loading…";
      try {
        await api(`${base}/versions/${v}/activate`, { method: "POST" });
      } finally {
        button.textContent = `${verb} ${v}`;
      }
      location.reload();
    });
  });
}

for (const button of document.querySelectorAll("button.delete-version")) {
  button.addEventListener("click", () => {
    const v = button.dataset.version;
    if (!confirm(`Delete ${model.name} version ${v}? Its files are removed.`)) return;
    guarded(button, async () => {
      await api(`${base}/versions/${v}`, { method: "DELETE" });
      location.assign(location.pathname);
    });
  });
}

const exportForm = document.getElementById("export");
exportForm?.addEventListener("submit", (e) => {
  e.preventDefault();
  const format = document.getElementById("export-format").value;
  const button = document.getElementById("export-button");
  guarded(button, async () => {
    button.textContent = "converting…";
    try {
      await download(
        `${base}/versions/${shownVersion}/export?format=${format}`,
        `${model.name}-v${shownVersion}-${format}.zip`,
      );
    } finally {
      button.textContent = "Download";
    }
  });
});

const deleteModel = document.getElementById("delete-model");
deleteModel?.addEventListener("click", () => {
  if (!confirm(`Delete the whole model ${model.name}, all ${model.versions.length} versions?`))
    return;
  guarded(deleteModel, async () => {
    await api(base, { method: "DELETE" });
    location.assign("/console/models");
  });
});

async function showCell(trueClass, predicted, button) {
  for (const b of document.querySelectorAll("#confusion button.cell")) b.removeAttribute("aria-pressed");
  button.setAttribute("aria-pressed", "true");
  const box = document.getElementById("cell-images");
  box.replaceChildren(el("p", { class: "muted", text: "loading images…" }));
  const params = new URLSearchParams({ true: trueClass, predicted });
  try {
    const body = await api(`${base}/versions/${shown.version}/validation?${params}`);
    const heading = el("h3", {
      text: `${trueClass} predicted as ${predicted}: ${body.in_cell ?? body.images.length} image(s)`,
    });
    const kept =
      body.in_cell > body.images.length
        ? el("p", {
            class: "muted",
            text: `Showing the ${body.images.length} least confident; a version keeps up to ${body.per_cell} per cell.`,
          })
        : null;
    const grid = el(
      "ul",
      { class: "gallery" },
      ...body.images.map((img) =>
        el(
          "li",
          {},
          el(
            "div",
            { class: "cell-picture" },
            el("img", {
              src: img.url,
              alt: `${img.source || "validation image"}: ${img.true}, predicted ${img.predicted}`,
              loading: "lazy",
            }),
          ),
          el("span", { class: "muted", text: `${pct(img.score)} ${img.source || ""}` }),
        ),
      ),
    );
    // Grad-CAM maps over the images, for the class each was predicted as (fetched when
    // asked for: each costs the service a forward and a backward pass).
    const explain = el("input", { type: "checkbox", id: "cell-explain" });
    explain.addEventListener("change", () => {
      for (const [i, img] of body.images.entries()) {
        const frame = grid.children[i].querySelector(".cell-picture");
        frame.querySelector(".heatmap")?.remove();
        if (explain.checked) {
          frame.append(
            el("img", {
              class: "heatmap",
              src: `${img.url}/gradcam`,
              alt: `where ${img.predicted} came from (Grad-CAM)`,
            }),
          );
        }
      }
    });
    const toggle = el("label", { class: "choice" }, explain, " Explain: show where each answer came from (Grad-CAM)");
    box.replaceChildren(
      heading,
      ...(kept ? [kept] : []),
      ...(body.images.length ? [toggle, grid] : [el("p", { text: "No images in this cell." })]),
    );
  } catch (err) {
    box.replaceChildren(el("p", { class: "error-text", text: err.message }));
  }
}

if (shown?.metrics?.per_class) {
  perClassTable(document.getElementById("per-class"), shown.metrics);
  confusionMatrix(document.getElementById("confusion"), shown.metrics, showCell);
  const select = document.getElementById("compare-with");
  const compareBox = document.getElementById("compare");
  select.addEventListener("change", () => {
    const other = byVersion[select.value];
    if (!other) return compareBox.replaceChildren();
    const [older, newer] = other.version < shown.version ? [other, shown] : [shown, other];
    compareTable(compareBox, older, newer);
  });
}

if (shown?.history?.length) {
  const curves = new Curves(
    document.getElementById("loss-chart"),
    document.getElementById("accuracy-chart"),
  );
  for (const entry of shown.history) curves.add(entry);
}

if (model.status === "failed" && model.reason) flash(`${model.name} failed to load: ${model.reason}`);
