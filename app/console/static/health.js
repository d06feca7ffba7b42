// Label health page: the images whose label the model doubts, as a grid to fix with one
// key (R relabel as the guess, D remove, K keep), near duplicates, confused classes.
import { api, el, flash, guarded, pct } from "./common.js";

const root = document.getElementById("health");
const name = root.dataset.name;
const version = root.dataset.version;
const base = `/datasets/${encodeURIComponent(name)}`;
const grid = document.getElementById("suspects");
const status = document.getElementById("health-status");

function card(s) {
  const item = el(
    "li",
    { tabindex: "0", "data-image": s.id, class: s.kept ? "done" : "" },
    el("img", { src: s.thumbnail_url, alt: s.filename, width: 96, height: 96, loading: "lazy" }),
    el("span", { class: "given", text: `labelled ${s.label}` }),
    el("span", { class: "guess", text: `model: ${s.guess} ${pct(s.guess_score)}` }),
    el("span", { class: "state muted", text: s.kept ? "kept" : "" }),
  );
  item.suspect = s;
  item.addEventListener("click", () => item.focus());
  return item;
}

function settle(item, words) {
  item.classList.add("done");
  item.querySelector(".state").textContent = words;
  const next = item.nextElementSibling;
  if (next) next.focus();
}

async function act(item, key) {
  const s = item.suspect;
  if (item.classList.contains("done")) return;
  await guarded(null, async () => {
    if (key === "r") {
      const change = await api(`${base}/images/${s.id}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label: s.guess }),
      });
      settle(item, `relabelled ${s.guess} (v${change.version})`);
    } else if (key === "d") {
      const change = await api(`${base}/images/${s.id}`, { method: "DELETE" });
      settle(item, `removed (v${change.version})`);
    } else if (key === "k") {
      await api(`${base}/health/keep`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ keep: [s.id] }),
      });
      settle(item, "kept");
    }
  });
}

grid.addEventListener("keydown", (e) => {
  const item = e.target.closest("li[data-image]");
  if (!item || e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.toLowerCase();
  if (["r", "d", "k"].includes(key)) {
    e.preventDefault();
    act(item, key);
  } else if (e.key === "ArrowRight" && item.nextElementSibling) {
    e.preventDefault();
    item.nextElementSibling.focus();
  } else if (e.key === "ArrowLeft" && item.previousElementSibling) {
    e.preventDefault();
    item.previousElementSibling.focus();
  }
});

function render(report) {
  status.textContent =
    `Report of ${report.created_at ? report.created_at.replace("T", " ").slice(0, 19) + " UTC" : "the training job"}: ` +
    report.method.predictions + "; " + report.method.duplicates + ".";
  document.getElementById("health-facts").hidden = false;
  document.getElementById("judge").textContent = `${report.model.name} version ${report.model.version}`;
  document.getElementById("h-images").textContent = String(report.images);
  document.getElementById("h-suspects").textContent = String(report.suspects_found);
  document.getElementById("h-duplicates").textContent = String(report.duplicates_found);
  document.getElementById("h-accuracy").textContent = pct(report.out_of_fold_accuracy);
  grid.replaceChildren(...report.suspects.map(card));
  if (!report.suspects.length) grid.replaceChildren(el("li", { class: "empty", text: "No label looks wrong." }));
  const pairs = document.getElementById("duplicates");
  pairs.replaceChildren(
    ...report.duplicates.map((p) =>
      el(
        "li",
        { class: p.across_classes ? "across" : "" },
        el("img", { src: p.a_url, alt: `${p.a_label} image`, width: 72, height: 72 }),
        el("img", { src: p.b_url, alt: `${p.b_label} image`, width: 72, height: 72 }),
        el("span", { text: `${p.a_label} · ${p.b_label} (${p.distance} bits)` }),
      ),
    ),
  );
  if (!report.duplicates.length) pairs.replaceChildren(el("li", { class: "empty", text: "None." }));
  document.querySelector("#confused tbody").replaceChildren(
    ...report.confused.map((c) =>
      el(
        "tr",
        {},
        el("td", { text: c.label }),
        el("td", { text: c.guess }),
        el("td", { text: String(c.count) }),
        el("td", { text: pct(c.share) }),
      ),
    ),
  );
  if (!report.confused.length) {
    document
      .querySelector("#confused tbody")
      .replaceChildren(el("tr", {}, el("td", { colspan: "4", text: "None: every out-of-fold answer was right." })));
  }
}

async function load(refresh) {
  status.textContent = refresh ? "Checking the labels again…" : "Reading the report…";
  try {
    render(await api(`${base}/versions/${version}/health${refresh ? "?refresh=true" : ""}`));
  } catch (err) {
    status.textContent = "";
    flash(err.message);
  }
}

document.getElementById("refresh").addEventListener("click", () => load(true));
load(false);
