// Audit page (admin keys): who did what, newest first, a page at a time.
import { api, el, flash } from "./common.js";

const body = document.querySelector("#audit tbody");
const more = document.getElementById("audit-more");
let offset = 0;

async function load() {
  try {
    const page = await api(`/audit?offset=${offset}&limit=100`);
    body.append(
      ...page.items.map((e) =>
        el(
          "tr",
          { class: e.status >= 400 ? "refused" : "" },
          el("td", { text: e.at.replace("T", " ").slice(0, 19) }),
          el("td", { text: e.key_id || "(no key)" }),
          el("td", { text: `${e.method} ${e.path}` }),
          el("td", { text: String(e.status) }),
          el("td", { text: e.client || "" }),
          el("td", { text: e.scope }),
        ),
      ),
    );
    offset += page.items.length;
    more.hidden = offset >= page.total;
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) flash(err.message);
  }
}

more.addEventListener("click", load);
// The key may arrive after the page loads (the key box): read the log once it can.
new MutationObserver(() => {
  if (document.body.dataset.scopes.split(" ").includes("admin") && !offset) load();
}).observe(document.body, { attributes: true, attributeFilter: ["data-scopes"] });
if ((document.body.dataset.scopes || "").split(" ").includes("admin")) load();
