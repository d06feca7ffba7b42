from app.jobs.runner import _Progress
from app.jobs.store import JobStore


def test_progress_reports_fraction_within_an_epoch_and_an_eta(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create("toy", {"epochs": 4}, True, [], {})
    progress = _Progress(store, job["id"], total=4, workspace=tmp_path)
    progress.on_phase("head", 0, 4)
    assert store.get(job["id"])["progress"]["fraction"] == 0.0
    progress.on_batch(1, 5, 10)  # half of the second epoch
    shown = store.get(job["id"])["progress"]
    assert shown["epoch"] == 1 and shown["fraction"] == 0.375
    assert shown["phase"] == "head" and shown["eta_seconds"] is not None
