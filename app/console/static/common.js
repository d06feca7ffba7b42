// What every console page shares: calling the API (with the key for admin actions),
// showing its errors as their sentence, the key box, small formatting helpers.

const KEY_STORE = "convserve.apiKey";

export const authRequired = document.body.dataset.authRequired === "true";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// The sentence an API error carries ({"detail", "code"}), or one made from the status.
export async function errorText(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON: a proxy's page, say */
  }
  const detail = body && (body.detail || body.error);
  if (typeof detail === "string") return detail;
  if (response.status === 413) return "The upload is larger than the service accepts.";
  return `The service answered ${response.status} ${response.statusText}.`;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// fetch() against the API: the JSON body, or an ApiError with the API's own sentence.
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers) });
  } catch (err) {
    throw new ApiError(0, "network", `The service could not be reached (${err.message}).`);
  }
  if (!response.ok) {
    const code = response.headers.get("content-type")?.includes("json")
      ? await response.clone().json().then((b) => b.code, () => null)
      : null;
    throw new ApiError(response.status, code, await errorText(response));
  }
  if (response.status === 204) return null;
  return response.json();
}

// GET a file from the API (with the key) and hand it to the browser as a download.
export async function download(path, filename) {
  let response;
  try {
    response = await fetch(path, { headers: headers({ Accept: "*/*" }) });
  } catch (err) {
    throw new ApiError(0, "network", `The service could not be reached (${err.message}).`);
  }
  if (!response.ok) throw new ApiError(response.status, null, await errorText(response));
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// POST a FormData with upload progress (fetch cannot report it): resolves to the JSON body.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () =>
      reject(new ApiError(0, "network", "The upload failed: the service could not be reached."));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const detail = body && (body.detail || body.error);
      const text =
        typeof detail === "string"
          ? detail
          : xhr.status === 413
            ? "The upload is larger than the service accepts."
            : `The service answered ${xhr.status}.`;
      reject(new ApiError(xhr.status, body && body.code, text));
    };
    xhr.send(form);
  });
}

export function flash(message, kind = "error") {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = `flash ${kind}`;
  box.hidden = !message;
  if (message) box.scrollIntoView({ block: "nearest" });
}

// Run an action, showing its error (with the API's sentence) instead of failing silently.
export async function guarded(button, action) {
  flash("");
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (err) {
    flash(err.message || String(err));
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export const pct = (x) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(1)}%`);

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

// What the key may do (GET /keys/me): the page shows only that (elements marked
// data-needs="train" or "admin"); the API refuses the rest either way.
async function showScopes() {
  const scopes = document.getElementById("key-scopes");
  let me = { scopes: [] };
  try {
    if (apiKey()) me = await api("/keys/me");
  } catch (err) {
    me = { scopes: [], error: err.message };
  }
  document.body.dataset.scopes = me.scopes.join(" ");
  if (scopes) {
    const models = me.models ? ` (${me.models.join(", ")} only)` : "";
    scopes.textContent = me.error
      ? me.error
      : me.scopes.length
        ? `may ${me.scopes.join(", ")}${models}`
        : "";
  }
}

async function openSession(key) {
  let response;
  try {
    response = await fetch("/session", {
      method: "POST",
      headers: { Authorization: `Bearer ${key}` },
    });
  } catch (err) {
    flash(`The service could not be reached (${err.message}).`);
    return false;
  }
  if (!response.ok) {
    flash(await errorText(response));
    return false;
  }
  flash("");
  return true;
}

function keyBox() {
  const form = document.getElementById("key-form");
  if (!form) return;
  const input = document.getElementById("api-key");
  const state = document.getElementById("key-state");
  const forget = document.getElementById("key-forget");
  const show = () => {
    const has = Boolean(apiKey());
    const open = document.body.dataset.publicReads === "true" ? "predictions and reads" : "predictions";
    state.textContent = has ? "key set for this tab" : `no key: only ${open}`;
    forget.hidden = !has;
    input.value = "";
    showScopes();
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value;
    if (key) {
      // The service checks the key and hands it back as a read cookie (GET only), so the
      // pages, their images and a job's events load with it; actions send the header.
      const opened = await openSession(key);
      if (!opened) return;
      sessionStorage.setItem(KEY_STORE, key);
      if (document.body.dataset.locked === "true") return location.reload();
    }
    show();
  });
  forget.addEventListener("click", async () => {
    sessionStorage.removeItem(KEY_STORE);
    await fetch("/session", { method: "DELETE" }).catch(() => null);
    location.reload(); // drop what the key let the page show
  });
  show();
}

// A note to show once the page has reloaded (after a change that reloads it).
const FLASH_STORE = "convserve.flash";

export function flashAfterReload(message) {
  sessionStorage.setItem(FLASH_STORE, message);
}

function storedFlash() {
  const note = sessionStorage.getItem(FLASH_STORE);
  if (note) {
    sessionStorage.removeItem(FLASH_STORE);
    flash(note, "ok");
  }
}

keyBox();
storedFlash();
