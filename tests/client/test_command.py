"""The real ``convserve`` command (a subprocess) against the real service on loopback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import SIGNS_DIR, toy_registry
from tests.jobs.service import Service, free_port

CONVSERVE = Path(sys.executable).parent / "convserve"
KEY = "test-key"


def needs_signs(test):
    """Real photos (and, for finetune, real training): slow, skipped where missing."""
    missing = pytest.mark.skipif(
        not SIGNS_DIR.is_dir(), reason=f"needs the SIGNS photos in {SIGNS_DIR}"
    )
    return pytest.mark.slow(missing(test))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("command")
    toy_registry(root)
    svc = Service(root, CONVSERVE_API_KEY=KEY).start()
    yield svc
    svc.stop()


def convserve(service, *args, key=KEY, timeout=300):
    env = {**os.environ, "CONVSERVE_URL": service.url, "CONVSERVE_API_KEY": key}
    return subprocess.run(
        [str(CONVSERVE), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _signs_folder(root: Path, classes=("0", "1", "2"), per_class=12) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for photo in sorted((SIGNS_DIR / name).iterdir())[:per_class]:
            shutil.copy(photo, root / name / photo.name)
    return root


@needs_signs
def test_finetune_a_folder_with_wait_creates_a_model(service, tmp_path):
    folder = _signs_folder(tmp_path / "hands")
    r = convserve(
        service,
        "finetune",
        folder,
        "--model",
        "hands",
        "--epochs",
        2,
        "--fine-tune-epochs",
        1,
        "--fine-tune-at",  # 12 photos a class: auto would train the head alone
        140,
        "--early-stopping-patience",
        0,
        "--image-size",
        32,
        "--batch-size",
        8,
        "--wait",
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "3 classes, 36 images" in r.stderr
    for epoch in ("epoch 1/3 head", "epoch 2/3 head", "epoch 3/3 fine_tune"):
        assert epoch in r.stderr
    assert "status: succeeded" in r.stderr
    assert "succeeded (model hands)" in r.stdout
    assert "new version hands:1 (active), validation accuracy" in r.stdout
    assert "per class" in r.stdout and "confusion matrix" in r.stdout

    detail = json.loads(convserve(service, "models", "hands", "--json").stdout)
    assert detail["active_version"] == 1 and detail["class_names"] == ["0", "1", "2"]
    photo = next((SIGNS_DIR / "2").iterdir())
    answer = convserve(service, "predict", photo, "--model", "hands", "--json")
    assert answer.returncode == 0
    assert json.loads(answer.stdout)["top"][0]["label"] in ("0", "1", "2")


@needs_signs
def test_predict_a_folder_of_mixed_formats_and_a_corrupt_file(service, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    photos = sorted((SIGNS_DIR / "4").iterdir())[:5]
    shutil.copy(photos[0], folder / "a.jpg")
    Image.open(photos[1]).save(folder / "b.png")
    Image.open(photos[2]).save(folder / "c.webp")
    Image.open(photos[3]).convert("L").save(folder / "nested" / "d.bmp")
    Image.open(photos[4]).convert("P").save(folder / "nested" / "e.gif")
    (folder / "broken.jpg").write_bytes(photos[0].read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image: not sent")

    r = convserve(service, "predict", folder, "--per-request", 3)
    assert r.returncode == 1
    for name in ("a.jpg", "b.png", "c.webp", "d.bmp", "e.gif"):
        assert name in r.stdout
    assert "broken.jpg" not in r.stdout and "notes.txt" not in r.stdout + r.stderr
    assert "failed" in r.stderr and "broken.jpg" in r.stderr
    assert "5 of 6 images classified" in r.stderr

    r = convserve(service, "predict", folder, "--json", "--top-k", 2)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    good = [line for line in lines if "top" in line]
    bad = [line for line in lines if "error" in line]
    assert len(good) == 5 and all(len(line["top"]) == 2 for line in good)
    assert {line["model"] for line in good} == {"toy"}
    assert all(isinstance(line["unknown"], bool) for line in good)
    assert [Path(b["path"]).name for b in bad] == ["broken.jpg"]
    assert bad[0]["error"]["code"] == "invalid_image"

    out = tmp_path / "out.csv"
    assert convserve(service, "predict", folder / "a.jpg", "--csv", out).returncode == 0
    assert out.read_text().splitlines()[0] == "path,model,version,rank,label,index,score,unknown"


def test_a_folder_with_one_class_is_refused_before_a_job_is_queued(service, tmp_path):
    from tests.helpers import make_dataset

    before = json.loads(convserve(service, "jobs", "--json").stdout)
    folder = make_dataset(tmp_path / "one", classes=("dark",), per_class=8)
    r = convserve(service, "finetune", folder, "--model", "toy")
    assert r.returncode == 1
    assert "at least two are needed (too_few_classes, HTTP 400)" in r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads(convserve(service, "jobs", "--json").stdout) == before


def test_cancel_a_running_job(service, tmp_path):
    from tests.helpers import make_dataset

    folder = make_dataset(tmp_path / "ds", per_class=30, size=64)
    r = convserve(
        service,
        "finetune",
        folder,
        "--model",
        "toy",
        "--epochs",
        200,
        "--fine-tune-epochs",
        0,
        "--early-stopping-patience",
        0,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    # What the service found in the upload, as it checked it before queueing the job.
    assert "2 classes, 60 images (hstripes 30, vstripes 30)" in r.stderr
    job_id = json.loads(r.stdout)["job_id"]
    cancel = convserve(service, "jobs", job_id, "--cancel")
    assert cancel.returncode == 0 and job_id in cancel.stderr
    followed = convserve(service, "jobs", job_id, "--follow", timeout=60)
    assert followed.returncode == 1  # cancelled is not success
    assert f"job {job_id}: cancelled" in followed.stdout


def test_activate_and_roll_back(service):
    r = convserve(service, "activate", "toy", 2)
    assert (r.returncode, r.stderr.strip()) == (0, "toy now serves version 2")
    assert json.loads(convserve(service, "models", "toy", "--json").stdout)["active_version"] == 2
    assert convserve(service, "activate", "toy", 1).returncode == 0
    listed = json.loads(convserve(service, "models", "--json").stdout)
    assert {m["name"]: m["active_version"] for m in listed}["toy"] == 1
    missing = convserve(service, "activate", "toy", 9)
    assert missing.returncode == 1 and "has no version 9 (version_not_found, HTTP 404)" in (
        missing.stderr
    )


def test_a_wrong_key_shows_the_api_401_message(service):
    r = convserve(service, "activate", "toy", 1, key="wrong")
    assert r.returncode == 1
    assert "needs an 'Authorization: Bearer <api key>' header" in r.stderr
    assert "(unauthorized, HTTP 401)" in r.stderr


def test_a_service_that_is_down_is_one_line(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run(
        [str(CONVSERVE), "models", "--url", down],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: cannot reach the service at {down} ([Errno 111] Connection refused)"
    ]


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_follow(service, tmp_path):
    import signal
    import time

    from tests.helpers import make_dataset

    folder = make_dataset(tmp_path / "ds", per_class=30, size=64)
    env = {**os.environ, "CONVSERVE_URL": service.url, "CONVSERVE_API_KEY": KEY}
    proc = subprocess.Popen(
        [
            str(CONVSERVE),
            "finetune",
            folder,
            "--model",
            "toy",
            "--epochs",
            "200",
            "--early-stopping-patience",
            "0",
            "--wait",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it: a runner that started these tests in the
        # background may have left SIGINT ignored, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    with service.client() as c:
        deadline = time.time() + 60
        running = []
        while time.time() < deadline and not running:
            running = [j for j in c.get("/finetune").json()["jobs"] if j["status"] == "running"]
            time.sleep(0.2)
        assert running, "the job never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        job_id = running[0]["job_id"]
        assert proc.returncode == 130
        assert f"job {job_id} keeps running; follow it again with: convserve jobs {job_id}" in err
        assert "Traceback" not in err
        assert "ended_at" not in err  # epoch lines show metrics, not timestamps
        assert c.get(f"/finetune/{job_id}").json()["status"] == "running"
        c.delete(f"/finetune/{job_id}", headers={"Authorization": f"Bearer {KEY}"})


def test_architectures_lists_the_bases_with_their_weights(service):
    table = convserve(service, "architectures")
    assert table.returncode == 0, table.stderr
    assert "138,357,544" in table.stdout and "from scratch" in table.stdout
    listed = json.loads(convserve(service, "architectures", "--json").stdout)
    assert {a["name"] for a in listed} >= {"lenet5", "googlenet", "efficientnet_b0"}


def test_export_writes_the_zip_and_refuses_a_bad_version(service, tmp_path):
    r = convserve(service, "export", "toy", 1, "--format", "keras", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    archive = tmp_path / "toy-v1-keras.zip"
    assert f"wrote {archive}" in r.stderr
    import zipfile

    with zipfile.ZipFile(archive) as z:
        assert sorted(n.split("/", 1)[1] for n in z.namelist()) == [
            "README.md", "custom_layers.py", "labels.txt", "model.keras",
        ]  # fmt: skip
        assert z.read("toy-v1-keras/labels.txt").decode().split() == ["circle", "square"]
    missing = convserve(service, "export", "toy", 9, "-o", tmp_path / "x.zip")
    assert missing.returncode == 1 and "(version_not_found, HTTP 404)" in missing.stderr
    assert not (tmp_path / "x.zip").exists() and not list(tmp_path.glob(".*part"))
