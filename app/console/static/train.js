// Train page: pick a stored dataset version (checked with GET .../check), or a folder
// (zipped here, uncompressed, with fflate) or an archive (checked with POST
// /datasets/check), then start POST /finetune and go to the job's page.
import { api, el, flash, upload } from "./common.js";

const form = document.getElementById("train-form");
const folder = document.getElementById("folder");
const archive = document.getElementById("archive");
const picked = document.getElementById("picked");
const checkButton = document.getElementById("check");
const startButton = document.getElementById("start");
const report = document.getElementById("report");
const uploadBox = document.getElementById("upload-box");
const uploadLabel = document.getElementById("upload-label");
const progress = document.getElementById("upload-progress");
const newName = document.getElementById("new-model");
const existing = document.getElementById("existing-model");

let dataset = null; // {blob, name}: what both the check and the job upload
let checked = false;
const storedSelect = document.getElementById("stored-dataset");
const storedVersion = document.getElementById("stored-version");
const keepAs = document.getElementById("keep-as");

function source() {
  return form.querySelector("input[name=source]:checked")?.value || "upload";
}

function stored() {
  const option = storedSelect.selectedOptions[0];
  if (!option) return null;
  return { name: option.value, version: storedVersion.value || option.dataset.latest };
}

function sourceChanged() {
  checked = false;
  report.hidden = true;
  startButton.disabled = true;
  checkButton.disabled = source() === "stored" ? !stored() : !dataset;
}

for (const radio of form.querySelectorAll("input[name=source]")) radio.addEventListener("change", sourceChanged);
for (const input of [storedSelect, storedVersion]) {
  input.addEventListener("focus", () => {
    const radio = form.querySelector("input[name=source][value=stored]");
    if (!radio.disabled) radio.checked = true;
  });
  input.addEventListener("change", sourceChanged);
}
for (const input of [folder, archive]) {
  input.addEventListener("focus", () => {
    form.querySelector("input[name=source][value=upload]").checked = true;
  });
}

function target() {
  return form.querySelector("input[name=target]:checked")?.value || "new";
}

newName.addEventListener("focus", () => {
  form.querySelector("input[name=target][value=new]").checked = true;
});
existing.addEventListener("focus", () => {
  const radio = form.querySelector("input[name=target][value=existing]");
  if (!radio.disabled) radio.checked = true;
});

function setDataset(value, text) {
  dataset = value;
  checked = false;
  picked.textContent = text;
  report.hidden = true;
  checkButton.disabled = !value;
  startButton.disabled = true;
}

const isJunk = (path) => path.split("/").some((part) => part.startsWith(".") || part === "__MACOSX");

folder.addEventListener("change", async () => {
  archive.value = "";
  const files = [...folder.files].filter((f) => !isJunk(f.webkitRelativePath || f.name));
  if (!files.length) return setDataset(null, "That folder holds no files.");
  const root = (files[0].webkitRelativePath || "").split("/")[0] || "dataset";
  picked.textContent = `Packing ${files.length} files from ${root}…`;
  const entries = {};
  for (const f of files) {
    entries[f.webkitRelativePath || f.name] = [new Uint8Array(await f.arrayBuffer()), { level: 0 }];
  }
  const zipped = window.fflate.zipSync(entries);
  const blob = new Blob([zipped], { type: "application/zip" });
  setDataset({ blob, name: `${root}.zip` }, `${files.length} files from the folder ${root}.`);
});

archive.addEventListener("change", () => {
  folder.value = "";
  const file = archive.files[0];
  if (!file) return setDataset(null, "");
  setDataset({ blob: file, name: file.name }, `The archive ${file.name} (${(file.size / 1e6).toFixed(1)} MB).`);
});

async function send(path, fields, label) {
  const body = new FormData();
  body.append("dataset", dataset.blob, dataset.name);
  for (const [k, v] of Object.entries(fields)) body.append(k, v);
  uploadBox.hidden = false;
  uploadLabel.textContent = label;
  progress.value = 0;
  try {
    return await upload(path, body, (fraction) => {
      progress.value = fraction;
    });
  } finally {
    uploadBox.hidden = true;
  }
}

function showReport(r) {
  const most = Math.max(...Object.values(r.counts));
  const rows = r.class_names.map((name) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${((r.counts[name] / most) * 100).toFixed(1)}%`;
    const few = r.counts[name] < Number(form.dataset.fewImages); // the check's own threshold
    return el(
      "tr",
      { "data-class": name },
      el("th", { scope: "row", text: name }),
      el("td", { text: String(r.counts[name]) }),
      el("td", { class: "track-cell" }, el("span", { class: "track" }, bar)),
      el("td", { class: few ? "warn" : "", text: few ? "few images" : "" }),
    );
  });
  const parts = [
    el("h3", { text: `Dataset check: ${r.images} images in ${r.class_names.length} classes` }),
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { id: "class-counts" },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { scope: "col", text: "Class" }),
            el("th", { scope: "col", text: "Images" }),
            el("th", { scope: "col", text: "" }),
            el("th", { scope: "col", text: "" }),
          ),
        ),
        el("tbody", {}, ...rows),
      ),
    ),
  ];
  if (r.warnings.length)
    parts.push(el("ul", { class: "warnings" }, ...r.warnings.map((w) => el("li", { text: w }))));
  if (r.skipped.length)
    parts.push(
      el("h4", { text: `${r.skipped.length} file(s) will be skipped` }),
      el(
        "ul",
        { class: "skipped" },
        ...r.skipped.map((s) => el("li", {}, el("code", { text: s.path }), `: ${s.reason}`)),
      ),
    );
  if (r.duplicates.length)
    parts.push(
      el("h4", { text: `${r.duplicates.length} group(s) of identical images` }),
      el(
        "ul",
        { class: "duplicates" },
        ...r.duplicates.map((g) => el("li", { text: g.join(" = ") })),
      ),
    );
  report.replaceChildren(...parts);
  report.hidden = false;
}

checkButton.addEventListener("click", async () => {
  flash("");
  checkButton.disabled = true;
  try {
    if (source() === "stored") {
      const { name, version } = stored();
      showReport(await api(`/datasets/${encodeURIComponent(name)}/versions/${version}/check`));
    } else showReport(await send("/datasets/check", {}, "Uploading for the check"));
    checked = true;
    startButton.disabled = false;
  } catch (err) {
    report.hidden = true;
    flash(err.message);
  } finally {
    checkButton.disabled = source() === "stored" ? !stored() : !dataset;
  }
});

function params() {
  const fields = {};
  for (const input of form.querySelectorAll(".params input, .params select")) {
    if (input.type === "checkbox") {
      // Sent only when changed: a network without ImageNet weights trains from scratch
      // unless told otherwise, and an unchanged box must not tell it otherwise.
      const value = input.checked ? "true" : "false";
      if (value !== input.dataset.default) fields[input.name] = value;
    }
    else if (input.value !== "") fields[input.name] = input.value;
  }
  return fields;
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  flash("");
  const fromStore = source() === "stored";
  if ((!fromStore && !dataset) || !checked) return flash("Pick a dataset and check it first.");
  const fields = params();
  if (target() === "new") {
    if (!newName.value) return flash("Name the new model (or train a new version of one).");
    fields.model = newName.value;
    fields.base = document.getElementById("base").value;
  } else {
    fields.model = existing.value;
  }
  fields.promote = document.getElementById("promote").checked ? "true" : "false";
  startButton.disabled = true;
  try {
    let job;
    if (fromStore) {
      const { name, version } = stored();
      const body = new FormData();
      for (const [k, v] of Object.entries({ ...fields, dataset_name: name, dataset_version: version }))
        body.append(k, v);
      job = await upload("/finetune", body, () => {});
    } else {
      if (keepAs.value) fields.dataset_name = keepAs.value;
      job = await send("/finetune", fields, "Uploading the dataset");
    }
    location.assign(`/console/jobs/${job.job_id}`);
  } catch (err) {
    flash(err.message);
    startButton.disabled = false;
  }
});

const wanted = new URLSearchParams(location.search).get("model");
if (!wanted && !existing.options.length) newName.focus();
sourceChanged();
