// Review page: clear the queue of kept predictions with the keyboard (digits and letters
// pick a class, Enter confirms the model's guess, Backspace discards), the next image
// preloaded; retrain from what was accepted; the model's capture settings.
import { api, el, flash, flashAfterReload, guarded, pct } from "./common.js";

const root = document.getElementById("review");
const KEYS = "123456789abcdefghijklmopqrstuvwxyz"; // n types a new class

if (root) {
  const model = root.dataset.model;
  const order = root.dataset.order;
  let classes = JSON.parse(root.dataset.classes);
  let items = [];
  let current = null;
  let busy = false;
  const left = document.getElementById("left");
  const image = document.getElementById("review-image");

  async function load() {
    const params = new URLSearchParams({ model, order, limit: "20" });
    const page = await api(`/review?${params}`);
    items = page.items;
    left.textContent = String(page.total);
    if (page.classes.length) classes = [...new Set([...page.classes, ...classes])];
    renderButtons();
    show();
  }

  function renderButtons() {
    const box = document.getElementById("class-buttons");
    box.replaceChildren(
      ...classes.map((c, i) =>
        el(
          "button",
          { type: "button", class: "secondary", "data-label": c, onclick: () => decide("accept", c) },
          el("kbd", { text: KEYS[i] || "" }),
          ` ${c}`,
        ),
      ),
    );
  }

  function show() {
    current = items[0] || null;
    document.getElementById("reviewer").hidden = !current;
    document.getElementById("empty").hidden = Boolean(current);
    if (!current) return;
    image.src = current.image_url;
    image.alt = `kept prediction ${current.filename || current.id}`;
    document.getElementById("guess").textContent = current.label;
    document.getElementById("guess-score").textContent = pct(current.score);
    document.getElementById("unknown-note").hidden = !current.unknown;
    document
      .getElementById("top")
      .replaceChildren(...current.top.slice(0, 3).map((t) => el("li", { text: `${t.label} ${pct(t.score)}` })));
    document.getElementById("review-meta").textContent =
      `${current.filename || "no file name"} · version ${current.version} · ${current.created_at.replace("T", " ").slice(0, 19)} UTC`;
    if (items[1]) new Image().src = items[1].image_url; // preload the next one
  }

  async function decide(action, label) {
    if (!current || busy) return;
    busy = true;
    const item = current;
    try {
      await guarded(null, async () => {
        const body = action === "discard" ? { action } : { action, label };
        const result = await api(`/review/${item.id}`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
        });
        items.shift();
        left.textContent = String(Math.max(0, Number(left.textContent) - 1));
        if (result.new_class && !classes.includes(result.label)) {
          classes.push(result.label);
          renderButtons();
        }
        flash(
          action === "discard"
            ? "Discarded."
            : `Added to ${result.dataset} as ${result.label} (version ${result.version}).`,
          "ok",
        );
        if (!items.length) await load();
        else show();
      });
    } finally {
      busy = false;
    }
  }

  document.getElementById("confirm").addEventListener("click", () => decide("accept", current?.label));
  document.getElementById("discard").addEventListener("click", () => decide("discard"));
  document.getElementById("new-class").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("new-class-name");
    const label = input.value.trim();
    if (!label) return;
    input.value = "";
    input.blur();
    decide("accept", label);
  });

  document.addEventListener("keydown", (e) => {
    const typing = e.target.closest("input, select, textarea");
    if (typing || e.ctrlKey || e.metaKey || e.altKey || !current) return;
    if (e.key === "Enter") {
      e.preventDefault();
      decide("accept", current.label);
    } else if (e.key === "Backspace" || e.key === "Delete") {
      e.preventDefault();
      decide("discard");
    } else if (e.key === "n") {
      e.preventDefault();
      document.getElementById("new-class-name").focus();
    } else {
      const i = KEYS.indexOf(e.key.toLowerCase());
      if (i >= 0 && i < classes.length) {
        e.preventDefault();
        decide("accept", classes[i]);
      }
    }
  });

  document.getElementById("retrain").addEventListener("click", (e) =>
    guarded(e.currentTarget, async () => {
      const job = await api(`/models/${encodeURIComponent(model)}/retrain`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      });
      location.assign(`/console/jobs/${job.job_id}`);
    }),
  );

  const number = (id) => {
    const v = document.getElementById(id).value.trim();
    return v === "" ? null : Number(v);
  };
  const captureUrl = `/models/${encodeURIComponent(model)}/capture`;
  document.getElementById("capture").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(document.getElementById("capture-save"), async () => {
      const dataset = document.getElementById("capture-dataset").value.trim();
      const rule = {
        below_score: number("below_score"),
        sample_rate: number("sample_rate") ?? 0,
        max_per_hour: number("max_per_hour") ?? 100,
        max_images: number("max_images") ?? 1000,
        expire_after_days: number("expire_after_days") || null,
        dataset: dataset || null,
      };
      await api(captureUrl, {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(rule),
      });
      flashAfterReload(`Capture is on for ${model}.`);
      location.reload();
    });
  });
  document.getElementById("capture-off").addEventListener("click", (e) =>
    guarded(e.currentTarget, async () => {
      await api(captureUrl, { method: "DELETE" });
      location.reload();
    }),
  );
  document.getElementById("capture-clear").addEventListener("click", (e) => {
    if (!confirm(`Delete every kept image of ${model}?`)) return;
    guarded(e.currentTarget, async () => {
      const done = await api(`/review?model=${encodeURIComponent(model)}`, { method: "DELETE" });
      flashAfterReload(`Deleted ${done.deleted} kept images.`);
      location.reload();
    });
  });

  load().catch((err) => flash(err.message));
}
