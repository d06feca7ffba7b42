// Datasets page: create a dataset, empty or from an archive (POST /datasets).
import { guarded, upload } from "./common.js";

const form = document.getElementById("new-dataset");

form.addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(document.getElementById("create"), async () => {
    const name = document.getElementById("new-name").value.trim();
    const archive = document.getElementById("new-archive").files[0];
    const body = new FormData();
    body.append("name", name);
    if (archive) body.append("archive", archive, archive.name);
    await upload("/datasets", body, () => {});
    location.assign(`/console/datasets/${encodeURIComponent(name)}`);
  });
});
