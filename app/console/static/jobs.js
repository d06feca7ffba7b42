// Jobs page: each job's duration (a running one's keeps counting).
import { duration } from "./common.js";

function fill() {
  for (const cell of document.querySelectorAll("td.duration")) {
    const { start, end } = cell.dataset;
    if (!start) {
      cell.textContent = "—";
      continue;
    }
    const stop = end ? Date.parse(end) : Date.now();
    cell.textContent = duration((stop - Date.parse(start)) / 1000) + (end ? "" : " so far");
  }
}
fill();
setInterval(fill, 1000);
