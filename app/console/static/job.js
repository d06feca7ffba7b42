// Job page: follows GET /finetune/{id}/events (Server-Sent Events; the browser reconnects
// with Last-Event-ID by itself) and grows the curves; at the end, the new version against
// the one that was active before, with promote or roll back.
import { api, duration, el, flash, guarded, pct } from "./common.js";
import { compareTable, Curves } from "./metrics.js";

const job = JSON.parse(document.getElementById("job-data").textContent);
const statusEl = document.getElementById("status");
const phaseEl = document.getElementById("phase");
const epochEl = document.getElementById("epoch");
const etaEl = document.getElementById("eta");
const bar = document.getElementById("progress");
const cancel = document.getElementById("cancel");
const errorEl = document.getElementById("error");
const curves = new Curves(
  document.getElementById("loss-chart"),
  document.getElementById("accuracy-chart"),
);

function setStatus(status) {
  statusEl.textContent = status;
  statusEl.className = `status status-${status}`;
  cancel.hidden = !["queued", "running"].includes(status);
}

function setProgress(p) {
  phaseEl.textContent = p.phase.replace("_", " ");
  epochEl.textContent = `${p.epoch} / ${p.total_epochs}`;
  bar.value = p.fraction;
  etaEl.textContent = p.eta_seconds === null ? "estimating…" : duration(p.eta_seconds);
}

cancel.addEventListener("click", () => {
  if (!confirm("Cancel this job? What it trained so far is discarded.")) return;
  guarded(cancel, async () => {
    const now = await api(`/finetune/${job.job_id}`, { method: "DELETE" });
    setStatus(now.status);
  });
});

const STOPPED = {
  early_stopping: "the validation loss stopped improving",
  time_budget: "the time budget ran out",
  max_epochs: "it reached its most epochs",
};

/** What training chose and why each phase stopped, as list items. */
function trainingChoices(training) {
  if (!training) return [];
  const items = training.phases.map((p) => {
    const kept = p.kept === "head" ? "; it never beat the head, so the head's weights were kept" : "";
    const best = p.best_epoch ? `, best epoch ${p.best_epoch}` : "";
    return `${p.phase.replace("_", "-")}: ${p.epochs_run} of at most ${p.max_epochs} epochs${best}; stopped because ${STOPPED[p.stopped] ?? p.stopped}${kept}.`;
  });
  items.push(`Fine-tuning depth: ${training.fine_tune_at.reason}.`);
  items.push(`Class weights: ${training.class_weight.reason}.`);
  const refit = training.refit;
  if (refit && refit.done) {
    const epochs = Object.entries(refit.epochs).map(([phase, n]) => `${phase.replace("_", "-")} ${n}`).join(", ");
    items.push(`Refit on all ${refit.images} images (${epochs} epochs, ${refit.seconds} s): ${refit.reason}; the validation figures are the selection run's.`);
  } else if (refit) {
    items.push(`No refit: ${refit.reason}.`);
  }
  return items.map((text) => el("li", { text }));
}

// Both versions on the same images (their own validation sets differ once a dataset grew).
function sameImages(same, older, newer) {
  const a = same.versions[String(older)];
  const b = same.versions[String(newer)];
  return el(
    "div",
    { id: "same-images" },
    el("h3", { text: `On the same ${same.images} images` }),
    el("p", { class: "muted", text: `${same.basis}.` }),
    el(
      "table",
      { class: "compare" },
      el("thead", {}, el("tr", {}, el("th", { text: "" }), el("th", { text: `version ${older}` }), el("th", { text: `version ${newer}` }))),
      el(
        "tbody",
        {},
        el("tr", {}, el("th", { scope: "row", text: "accuracy" }), el("td", { text: pct(a.accuracy) }), el("td", { text: pct(b.accuracy) })),
      ),
    ),
  );
}

async function outcome(done) {
  const box = document.getElementById("outcome");
  const text = document.getElementById("outcome-text");
  const actions = document.getElementById("outcome-actions");
  etaEl.textContent = "—";
  if (done.status !== "succeeded" || !done.result) {
    if (done.error) {
      errorEl.textContent = done.error.detail;
      errorEl.hidden = false;
    }
    return;
  }
  bar.value = 1;
  const result = done.result;
  const modelUrl = `/models/${encodeURIComponent(result.model)}`;
  const detail = await api(modelUrl);
  const byVersion = Object.fromEntries(detail.version_details.map((v) => [v.version, v]));
  const fresh = byVersion[result.version];
  const before = byVersion[result.previous_version];
  const promoted = result.promoted
    ? "It is being served."
    : result.promotion_error
      ? `It was not promoted: ${result.promotion_error}`
      : "It is not served yet.";
  text.textContent = `${result.model} version ${result.version}: validation accuracy ${pct(result.metrics.accuracy)}. ${promoted}`;
  document.getElementById("training-choices").replaceChildren(...trainingChoices(result.training));
  const link = el("a", {
    class: "button secondary",
    href: `/console/models/${encodeURIComponent(result.model)}?version=${result.version}`,
    text: "Confusion matrix and details",
  });
  const buttons = [link];
  const activate = (version, label) => {
    const button = el("button", { type: "button", class: "activate", "data-needs": "admin", text: label });
    button.addEventListener("click", () => {
      if (!confirm(`${label}: serve ${result.model} version ${version}?`)) return;
      guarded(button, async () => {
        const now = await api(`${modelUrl}/versions/${version}/activate`, { method: "POST" });
        text.textContent = `${result.model} version ${now.active_version} is being served.`;
        flash(`${result.model} now serves version ${now.active_version}.`, "ok");
      });
    });
    return button;
  };
  if (detail.active_version !== result.version && fresh)
    buttons.push(activate(result.version, `Promote version ${result.version}`));
  if (before && before.version !== result.version)
    buttons.push(activate(before.version, `Roll back to version ${before.version}`));
  actions.replaceChildren(...buttons);
  if (fresh && before?.metrics?.per_class && fresh.metrics?.per_class) {
    compareTable(document.getElementById("compare"), before, fresh);
    if (fresh.dataset?.name && before.dataset?.name) {
      const same = await api(`${modelUrl}/compare?a=${before.version}&b=${fresh.version}`).catch(() => null);
      if (same) document.getElementById("compare").append(sameImages(same, before.version, fresh.version));
    }
  }
  else if (fresh && before)
    document
      .getElementById("compare")
      .replaceChildren(
        el("p", {
          class: "muted",
          text: `Version ${before.version} has no validation numbers of its own (it was not trained here), so there is nothing to set side by side.`,
        }),
      );
  box.hidden = false;
}

for (const entry of job.history || []) curves.add(entry);
if (job.progress) setProgress(job.progress);

const events = new EventSource(`/finetune/${encodeURIComponent(job.job_id)}/events`);
events.addEventListener("status", (e) => {
  const data = JSON.parse(e.data);
  setStatus(data.status);
  if (data.error) {
    errorEl.textContent = data.error.detail;
    errorEl.hidden = false;
  }
});
events.addEventListener("progress", (e) => setProgress(JSON.parse(e.data)));
events.addEventListener("epoch", (e) => curves.add(JSON.parse(e.data)));
events.addEventListener("done", (e) => {
  events.close(); // the stream ends here; without close() the browser would reconnect
  const data = JSON.parse(e.data);
  setStatus(data.status);
  document.body.dataset.jobDone = data.status;
  outcome(data).catch((err) => flash(err.message));
});
events.addEventListener("error", () => {
  if (events.readyState === EventSource.CLOSED) flash("Lost the job's event stream; reload the page.");
});
