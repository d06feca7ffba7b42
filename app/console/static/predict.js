// Predict page: images from a picker, a drop or the webcam, each sent to /predict on its
// own so that one bad file shows its own error and the others still get their answer.
import { api, el, flash } from "./common.js";

const modelSelect = document.getElementById("model");
const versionSelect = document.getElementById("version");
const topK = document.getElementById("top-k");
const explain = document.getElementById("explain");
const results = document.getElementById("results");
const noResults = document.getElementById("no-results");
const drop = document.getElementById("drop");
const picker = document.getElementById("files");

const wanted = new URLSearchParams(location.search).get("model");
if (wanted && [...modelSelect.options].some((o) => o.value === wanted)) modelSelect.value = wanted;

function fillVersions() {
  const option = modelSelect.selectedOptions[0];
  versionSelect.replaceChildren();
  if (!option) return;
  const active = option.dataset.active;
  versionSelect.append(el("option", { value: "", text: `active${active ? ` (${active})` : ""}` }));
  for (const v of option.dataset.versions.split(",").filter(Boolean).reverse()) {
    if (v !== active) versionSelect.append(el("option", { value: v, text: `version ${v}` }));
  }
}
modelSelect.addEventListener("change", fillVersions);
fillVersions();

function bars(top) {
  return el(
    "ul",
    { class: "bars" },
    ...top.map((t) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.max(0.5, t.score * 100).toFixed(1)}%`;
      return el(
        "li",
        { "data-label": t.label },
        el("span", { class: "label", text: t.label }),
        el("span", { class: "track", role: "presentation" }, bar),
        el("span", { class: "score", text: `${(t.score * 100).toFixed(1)}%` }),
      );
    }),
  );
}

async function classify(file) {
  noResults.hidden = true;
  const url = URL.createObjectURL(file);
  const status = el("p", { class: "muted", text: "classifying…" });
  const picture = el("div", { class: "picture" }, el("img", { src: url, alt: file.name, class: "thumb" }));
  const card = el(
    "li",
    { class: "result", "data-file": file.name },
    picture,
    el("div", { class: "answer" }, el("h3", { text: file.name }), status),
  );
  results.prepend(card);
  const params = new URLSearchParams({ model: modelSelect.value, top_k: topK.value || "5" });
  if (versionSelect.value) params.set("version", versionSelect.value);
  if (explain.checked) params.set("explain", "gradcam");
  const form = new FormData();
  form.append("file", file, file.name);
  const started = performance.now();
  try {
    const body = await api(`/predict?${params}`, { method: "POST", body: form });
    const ms = performance.now() - started;
    const prediction = body.predictions[0];
    const top = prediction.top;
    const answer = [
      el("p", {
        class: "meta",
        text: `${body.model} version ${body.version} · ${ms.toFixed(0)} ms`,
      }),
    ];
    if (prediction.unknown) {
      const why =
        prediction.similarity === null || prediction.similarity === undefined
          ? "none of this model's classes is likely enough"
          : "this photo is unlike every photo the model trained on";
      answer.push(el("p", { class: "unknown", text: `Unknown: ${why} (its best guesses below).` }));
    }
    answer.push(bars(top));
    status.replaceWith(...answer);
    card.dataset.top = top[0].label;
    card.dataset.unknown = String(prediction.unknown);
    const explanation = prediction.explanation;
    if (explanation) {
      // The map is the size of the image the model saw (squashed to a square): laid over
      // the thumbnail, stretched to it.
      picture.append(
        el("img", {
          class: "heatmap",
          src: `data:image/png;base64,${explanation.png}`,
          alt: `where ${explanation.label} came from (Grad-CAM at ${explanation.layer})`,
        }),
      );
    }
  } catch (err) {
    card.classList.add("failed");
    status.replaceWith(el("p", { class: "error-text", role: "alert", text: err.message }));
  }
}

async function classifyAll(files) {
  flash("");
  const list = [...files];
  if (!list.length) return;
  // A few at a time: the service batches them, and the page stays responsive.
  const queue = list.slice();
  const worker = async () => {
    while (queue.length) await classify(queue.shift());
  };
  await Promise.all([worker(), worker(), worker()]);
}

picker.addEventListener("change", () => {
  classifyAll(picker.files);
  picker.value = "";
});
drop.addEventListener("click", (e) => {
  if (e.target === drop) picker.click();
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    picker.click();
  }
});
for (const kind of ["dragenter", "dragover"]) {
  drop.addEventListener(kind, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  classifyAll(e.dataTransfer.files);
});

// The webcam: browsers offer it only to secure pages (https, or http on localhost).
const video = document.getElementById("camera");
const start = document.getElementById("camera-start");
const shot = document.getElementById("camera-shot");
const stop = document.getElementById("camera-stop");
const note = document.getElementById("camera-note");
let stream = null;

if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  start.disabled = true;
  note.textContent = window.isSecureContext
    ? "This browser offers no webcam access."
    : `The webcam works only over https or on localhost; this page came over plain http from ${location.host}.`;
}

function stopCamera() {
  for (const track of stream?.getTracks() || []) track.stop();
  stream = null;
  video.hidden = shot.hidden = stop.hidden = true;
  start.hidden = false;
}

start.addEventListener("click", async () => {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
  } catch (err) {
    note.textContent = `No webcam: ${err.message}`;
    return;
  }
  video.srcObject = stream;
  await video.play();
  video.hidden = shot.hidden = stop.hidden = false;
  start.hidden = true;
  note.textContent = "";
});
stop.addEventListener("click", stopCamera);
shot.addEventListener("click", () => {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob(
    (blob) => classifyAll([new File([blob], `webcam-${Date.now()}.jpg`, { type: "image/jpeg" })]),
    "image/jpeg",
    0.92,
  );
});
