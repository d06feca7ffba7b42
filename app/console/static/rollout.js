// The model page's Rollout panel: start a canary or shadow rollout, watch its figures grow
// (every 2 seconds while it runs), promote or abort.
import { api, el, flashAfterReload, guarded, pct } from "./common.js";

const panel = document.getElementById("rollout");
const base = `/models/${encodeURIComponent(panel.dataset.model)}/rollout`;
const state = document.getElementById("rollout-state");
let timer = null;

function render(r) {
  const running = r.status === "running";
  const what = `${r.mode} rollout of version ${r.version} (against version ${r.baseline}, share ${r.share})`;
  state.textContent = running
    ? `A ${what} is running. Figures from ${r.replicas} replica(s).`
    : `The last ${what} ended: ${r.status}${r.reason ? ` (${r.reason})` : ""}.`;
  panel.dataset.status = r.status;
  document.getElementById("rollout-actions").hidden = !running;
  document.getElementById("rollout-figures-wrap").hidden = false;
  document.querySelector("#rollout-figures tbody").replaceChildren(
    ...Object.entries(r.figures).map(([version, f]) =>
      el(
        "tr",
        { "data-version": version },
        el("th", { scope: "row", text: Number(version) === r.version ? `${version} (candidate)` : version }),
        el("td", { class: "requests", text: String(f.requests) }),
        el("td", { text: `${f.errors}${f.error_rate ? ` (${pct(f.error_rate)})` : ""}` }),
        el("td", { text: String(f.latency_ms.p50 ?? "—") }),
        el("td", { text: String(f.latency_ms.p95 ?? "—") }),
        el("td", { text: String(f.latency_ms.p99 ?? "—") }),
        el("td", { text: String(f.compared) }),
        el("td", { class: "agreement", text: pct(f.agreement) }),
        el("td", { text: pct(f.unknown_rate) }),
      ),
    ),
  );
  clearTimeout(timer);
  if (running) timer = setTimeout(refresh, 2000);
}

async function refresh() {
  try {
    render(await api(base));
  } catch (err) {
    if (err.status !== 404) state.textContent = err.message;
  }
}

const form = document.getElementById("rollout-form");
form?.addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(document.getElementById("rollout-start"), async () => {
    const agreement = document.getElementById("rollout-agreement").value.trim();
    const body = {
      version: Number(document.getElementById("rollout-version").value),
      mode: document.getElementById("rollout-mode").value,
      share: Number(document.getElementById("rollout-share").value),
      min_agreement: agreement === "" ? null : Number(agreement),
    };
    render(
      await api(base, {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      }),
    );
  });
});

document.getElementById("rollout-promote").addEventListener("click", (e) => {
  if (!confirm("Promote: the candidate serves every request?")) return;
  guarded(e.currentTarget, async () => {
    const r = await api(`${base}/promote`, { method: "POST" });
    flashAfterReload(`Version ${r.version} now serves every request.`);
    location.reload();
  });
});
document.getElementById("rollout-abort").addEventListener("click", (e) =>
  guarded(e.currentTarget, async () => render(await api(base, { method: "DELETE" }))),
);

refresh();
