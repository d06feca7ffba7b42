"""The web console in a real Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against the real service on loopback, with small models.

Every scenario saves a screenshot under build/test-artifacts/console (or
$CONVSERVE_TEST_ARTIFACTS); page load times and the delay from an epoch's end to its point
on the curve go to measurements.json there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.storage.registry import ModelRegistry
from app.training.evaluate import classification_metrics, write_validation_samples
from tests.helpers import (
    SIGNS_DIR,
    image_bytes,
    make_dataset,
    pattern_image,
    toy_registry,
    write_toy_version,
    zip_directory,
)
from tests.jobs.service import ROOT, Service, wait_for

CHROMIUM = Path(os.environ.get("CONVSERVE_CHROMIUM", "/usr/bin/chromium"))
# The flags this machine needs: no sandbox as root, no GPU, and no background traffic to
# Google's hosts (the network is closed; without these Chromium keeps retrying).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "console-key"
ARTIFACTS = (
    Path(os.environ.get("CONVSERVE_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "console"
)
MEASUREMENTS = ARTIFACTS / "measurements.json"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
    ),
]
needs_signs = pytest.mark.skipif(
    not SIGNS_DIR.is_dir(), reason=f"needs the SIGNS photos in {SIGNS_DIR}"
)


def record(name: str, value) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data[name] = value
    MEASUREMENTS.write_text(json.dumps(data, indent=2))


def _signs_version(registry: ModelRegistry, tmp: Path) -> None:
    """A 3-class "signs" model whose version 1 has validation numbers, curves and kept
    validation images (a toy network; its numbers are made up but consistent)."""
    classes = ["0", "1", "2"]
    y_true = np.array([0] * 4 + [1] * 4 + [2] * 4)
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 1, 2, 2, 2, 0])
    scores = np.linspace(0.4, 0.99, 12)
    files = []
    for i, t in enumerate(y_true):
        path = tmp / "prep" / f"{t:04d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(pattern_image(("dark", "checks", "hstripes")[t], 64, i)))
        files.append(str(path))
    sources = {f"{t:04d}/{i:06d}.png": f"{t}/photo_{i}.jpg" for i, t in enumerate(y_true)}
    history = [
        {
            "epoch": 1,
            "phase": "head",
            "loss": 1.0,
            "accuracy": 0.5,
            "val_loss": 1.1,
            "val_accuracy": 0.45,
        },
        {
            "epoch": 2,
            "phase": "head",
            "loss": 0.7,
            "accuracy": 0.7,
            "val_loss": 0.8,
            "val_accuracy": 0.66,
        },
    ]
    write_toy_version(
        registry,
        "signs",
        classes,
        seed=5,
        metadata={
            "metrics": classification_metrics(y_true, y_pred, classes),
            "history": history,
            "dataset": {"images": 60},
        },
        also_save=lambda folder: write_validation_samples(
            folder, files, y_true, y_pred, scores, sources
        ),
    )


def _hands_version(registry: ModelRegistry) -> None:
    """A "hands" model that answers unknown by the nearest training image: the toy network,
    with the features of dark photos only as its training images (a checked photo is far
    from them: similarity about 0.81 against 1.0)."""
    from app.nets.transfer import load_classifier
    from app.serving.features import FeatureBank, features_of
    from app.storage.registry import MODEL_FILE

    def bank(folder: Path) -> None:
        dark = np.stack([np.asarray(pattern_image("dark", 32, seed)) for seed in range(8)])
        _, features = features_of(load_classifier(folder / MODEL_FILE), [dark])
        FeatureBank.of(features, "predictions").save(folder)

    abstention = {
        "method": "nearest",
        "score": "cosine similarity of its features to the nearest training image's",
        "threshold": 0.98,
        "keep_share": 0.97,
        "bank_images": 8,
        "top_score_threshold": 0.0,
    }
    write_toy_version(
        registry,
        "hands",
        ["open", "fist"],
        seed=3,
        metadata={"abstention": abstention},
        also_save=bank,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    registry = toy_registry(root)
    _signs_version(registry, root)
    _hands_version(registry)
    svc = Service(
        root,
        CONVSERVE_API_KEY=KEY,
        CONVSERVE_SERVED_MODELS="toy",
        CONVSERVE_MAX_IMAGE_BYTES="400000",
        CONVSERVE_BACKEND="keras",
        CONVSERVE_LABEL_HEALTH="1",  # the review test reads the report
    ).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, service, request):
    """A fresh tab (its own storage, so no key) that fails the test on a script error or a
    Content-Security-Policy refusal, and leaves a screenshot behind."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=service.url)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    tab.on("dialog", lambda dialog: dialog.accept())  # confirmations say yes
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not problems, problems


def use_key(page) -> None:
    """Enter the admin key in the page's key box (a page that asked for one reloads)."""
    page.fill("#api-key", KEY)
    page.click("#key-save")
    sync_api.expect(page.locator("#key-state")).to_have_text("key set for this tab")


def api(service) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}
    )


def _photo(tmp_path: Path) -> Path:
    if SIGNS_DIR.is_dir():
        return sorted((SIGNS_DIR / "3").iterdir())[0]
    path = tmp_path / "square.png"
    path.write_bytes(image_bytes(pattern_image("checks", 64)))
    return path


def test_predict_a_photo_and_see_its_bars(page, service, tmp_path):
    page.goto("/")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    record("predict_page_load_ms", round(load_ms, 1))
    photo = _photo(tmp_path)
    page.set_input_files("#files", str(photo))
    card = page.locator(f'.result[data-file="{photo.name}"]')
    sync_api.expect(card.locator(".bars li")).to_have_count(2)  # toy knows two classes
    expected = httpx.post(
        f"{service.url}/predict", files={"file": (photo.name, photo.read_bytes())}
    ).json()["predictions"][0]["top"]
    labels = card.locator(".bars li").evaluate_all("els => els.map(e => e.dataset.label)")
    assert labels == [t["label"] for t in expected]
    first = card.locator(".bars li .score").first.inner_text()
    assert first == f"{expected[0]['score'] * 100:.1f}%"
    assert "toy version 1" in card.locator(".meta").inner_text()
    assert card.locator(".meta").inner_text().endswith(" ms")
    assert card.locator("img.thumb").evaluate("img => img.naturalWidth") > 0
    # Over plain http from loopback the page is a secure context: the webcam is offered.
    assert page.locator("#camera-start").is_enabled()


def test_explain_lays_a_heat_map_over_the_photo(page, service, tmp_path):
    page.goto("/")
    page.check("#explain")
    photo = _photo(tmp_path)
    page.set_input_files("#files", str(photo))
    card = page.locator(f'.result[data-file="{photo.name}"]')
    heat = card.locator("img.heatmap")
    sync_api.expect(heat).to_have_count(1)
    # A decoded PNG the size of the image the model saw, over the thumbnail.
    assert heat.evaluate("img => img.complete && img.naturalWidth") == 32
    assert "Grad-CAM" in heat.get_attribute("alt")
    box, thumb = heat.bounding_box(), card.locator("img.thumb").bounding_box()
    assert (box["x"], box["y"], box["width"]) == (thumb["x"], thumb["y"], thumb["width"])


def test_a_photo_unlike_the_training_photos_is_shown_as_unknown(page, service, tmp_path):
    page.goto("/")
    page.select_option("#model", "hands")
    sync_api.expect(page.locator("#version option")).not_to_have_count(0)
    paths = []
    for kind in ("dark", "checks"):
        paths.append(tmp_path / f"{kind}.png")
        paths[-1].write_bytes(image_bytes(pattern_image(kind, 32, seed=50)))
    page.set_input_files("#files", [str(p) for p in paths])
    dark = page.locator('.result[data-file="dark.png"]')
    checks = page.locator('.result[data-file="checks.png"]')
    sync_api.expect(checks.locator(".bars li")).to_have_count(2)  # still ranked
    sync_api.expect(dark.locator(".bars li")).to_have_count(2)
    assert checks.get_attribute("data-unknown") == "true"
    assert "unlike every photo the model trained on" in checks.locator(".unknown").inner_text()
    assert dark.get_attribute("data-unknown") == "false"
    assert dark.locator(".unknown").count() == 0


def test_errors_show_as_their_sentence(page, service, tmp_path):
    page.goto("/")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big.write_bytes(image_bytes(Image.fromarray(noise), "PNG"))  # > 400,000 bytes
    assert big.stat().st_size > 400_000
    page.set_input_files("#files", [str(notes), str(big), str(_photo(tmp_path))])
    with httpx.Client(base_url=service.url) as c:
        for path, status in ((notes, 400), (big, 413)):
            r = c.post("/predict", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == status
            shown = page.locator(f'.result[data-file="{path.name}"] .error-text')
            sync_api.expect(shown).to_have_text(r.json()["detail"])
    # The good image in the same pick still gets its answer.
    sync_api.expect(page.locator(".result .bars")).to_have_count(1)

    # An archive with a single class, at the dataset check.
    one = make_dataset(tmp_path / "one", classes=("dark",), per_class=6)
    archive = shutil.make_archive(str(tmp_path / "one"), "zip", one)
    page.goto("/console/train")
    use_key(page)
    page.set_input_files("#archive", archive)
    page.click("#check")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        r = c.post("/datasets/check", files={"dataset": ("one.zip", Path(archive).read_bytes())})
    assert r.json()["code"] == "too_few_classes"
    sync_api.expect(page.locator("#flash")).to_have_text(r.json()["detail"])
    assert page.locator("#start").is_disabled()


def test_a_key_sees_only_what_its_scope_may_do_and_the_api_still_refuses(page, service):
    with api(service) as c:
        reader = c.post("/keys", json={"name": "app", "scopes": ["predict"]}).json()["key"]
    activate = page.locator('button.activate[data-version="2"]')
    # No key: the page asks for one and shows nothing of the model.
    response = page.goto("/console/models/toy")
    assert response.status == 401
    sync_api.expect(page.locator(".error-text")).to_contain_text("Authorization")
    sync_api.expect(page.locator("#versions")).to_have_count(0)
    # A wrong key is refused in the key box, with the API's sentence.
    page.fill("#api-key", "cs_000000000000_wrong")
    page.click("#key-save")
    sync_api.expect(page.locator("#flash")).to_contain_text("wrong or revoked")
    # A predict key: the page, but no promote, delete or export buttons...
    page.fill("#api-key", reader)
    page.click("#key-save")
    sync_api.expect(page.locator("#key-scopes")).to_have_text("may predict")
    sync_api.expect(page.locator("#active-version")).to_have_text("1")
    sync_api.expect(page.locator("#export")).to_be_hidden()
    sync_api.expect(activate).to_be_hidden()
    # ... and the API refuses the action all the same.
    admin = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=service.url) as c:
        assert c.post("/models/toy/versions/2/activate").status_code == 401
        r = c.post("/models/toy/versions/2/activate", headers={"Authorization": f"Bearer {reader}"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert c.get("/models/toy", headers=admin).json()["active_version"] == 1

        # The admin key: promote 2, then roll back to 1 from the versions table.
        use_key(page)
        sync_api.expect(page.locator("#key-scopes")).to_have_text("may predict, train, admin")
        activate.click()
        sync_api.expect(page.locator("#active-version")).to_have_text("2")
        assert c.get("/models/toy", headers=admin).json()["active_version"] == 2
        page.click('button.activate[data-version="1"]')
        sync_api.expect(page.locator("#active-version")).to_have_text("1")
        assert c.get("/models/toy", headers=admin).json()["active_version"] == 1
    # The key lives in this tab only; a new tab (another context here) has none.
    assert page.evaluate("sessionStorage.getItem('convserve.apiKey')") == KEY

    # Admins see who did what: the refused activation above, and the promotion.
    page.click("nav >> text=Audit")
    rows = page.locator("#audit tbody tr")
    sync_api.expect(rows.first).to_be_visible()
    sync_api.expect(page.locator("#audit")).to_contain_text("POST /models/toy/versions/2/activate")
    sync_api.expect(page.locator("#audit")).to_contain_text("403")


def test_a_confusion_matrix_cell_shows_its_images(page, service):
    page.goto("/console/models/signs")
    use_key(page)
    sync_api.expect(page.locator("#per-class tbody tr")).to_have_count(3)
    # True "1", predicted "2": one image (photo_6), shown with where it came from.
    cell = page.locator('#confusion button.cell[data-true="1"][data-predicted="2"]')
    assert cell.inner_text() == "1"
    cell.click()
    images = page.locator("#cell-images .gallery img")
    sync_api.expect(images).to_have_count(1)
    assert "1/photo_6.jpg" in images.first.get_attribute("alt")
    images.first.evaluate("img => img.decode()")
    assert images.first.evaluate("img => img.naturalWidth") > 0
    page.locator('#confusion button.cell[data-true="0"][data-predicted="0"]').click()
    sync_api.expect(images).to_have_count(3)
    # Explain: each image gets its Grad-CAM map over it (a PNG from the service).
    page.check("#cell-explain")
    maps = page.locator("#cell-images .gallery img.heatmap")
    sync_api.expect(maps).to_have_count(3)
    maps.first.evaluate("img => img.decode()")
    assert maps.first.evaluate("img => img.naturalWidth") > 0
    page.uncheck("#cell-explain")
    sync_api.expect(maps).to_have_count(0)
    # The recorded curves are drawn: two epochs, train and validation.
    assert page.locator("#loss-chart").get_attribute("data-points") == "2"
    assert page.locator("#loss-chart canvas").count() == 1


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_fit_the_width(browser, service, width):
    context = browser.new_context(viewport={"width": width, "height": 800}, base_url=service.url)
    tab = context.new_page()
    tab.goto("/")
    use_key(tab)  # the pages other than Predict need a key to read
    loads = {}
    for path in (
        "/",
        "/console/models",
        "/console/models/signs",
        "/console/train",
        "/console/jobs",
        "/console/datasets",
    ):
        tab.goto(path)
        tab.wait_for_load_state("load")
        loads[path] = round(
            tab.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"), 1
        )
        overflow = tab.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, f"{path} is {overflow}px wide at {width}px"
        # Every control has a label a screen reader can read.
        unlabelled = tab.evaluate(
            """() => [...document.querySelectorAll('input, select, button')]
                .filter(e => e.type !== 'hidden' && !e.labels?.length
                        && !e.getAttribute('aria-label') && !e.textContent.trim())
                .map(e => e.id || e.outerHTML.slice(0, 80))"""
        )
        assert not unlabelled, f"{path}: {unlabelled}"
        name = path.strip("/").replace("/", "-") or "predict"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    # Keyboard: Tab from the top reaches the first nav link with a visible focus ring.
    tab.goto("/")
    tab.keyboard.press("Tab")
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.textContent") == "convserve"
    record(f"page_load_ms_{width}px", loads)
    context.close()


def test_cancel_a_running_job(page, service, tmp_path):
    data = make_dataset(tmp_path / "ds", per_class=8, size=32)
    archive = Path(shutil.make_archive(str(tmp_path / "ds"), "zip", data))
    with api(service) as c:
        r = c.post(
            "/finetune",
            files={"dataset": ("ds.zip", archive.read_bytes())},
            data={
                "model": "shapes",
                "epochs": 200,
                "early_stopping_patience": 0,
                "image_size": 32,
                "batch_size": 4,
            },
        )
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        page.goto(f"/console/jobs/{job_id}")
        use_key(page)
        sync_api.expect(page.locator("#status")).to_have_text("running", timeout=120_000)
        page.click("#cancel")
        sync_api.expect(page.locator("#status")).to_have_text("cancelled", timeout=60_000)
        assert c.get(f"/finetune/{job_id}").json()["status"] == "cancelled"
        assert page.locator("#cancel").is_hidden()
        # It is listed on the jobs page, newest first, as cancelled.
        page.goto("/console/jobs")
        first = page.locator("#jobs-table tbody tr").first
        assert first.get_attribute("data-job") == job_id
        assert "cancelled" in first.inner_text()


def _signs_folder(root: Path, per_class: int = 12) -> Path:
    for name in ("0", "1", "2"):
        (root / name).mkdir(parents=True)
        for photo in sorted((SIGNS_DIR / name).iterdir())[:per_class]:
            shutil.copy(photo, root / name / photo.name)
    return root


@pytest.mark.slow
@needs_signs
def test_train_from_a_folder_watch_it_learn_compare_and_roll_back(page, service, tmp_path):
    folder = _signs_folder(tmp_path / "my signs")
    page.goto("/console/train?model=signs")
    use_key(page)
    assert page.locator("#existing-model").input_value() == "signs"
    page.set_input_files("#folder", str(folder))
    sync_api.expect(page.locator("#picked")).to_contain_text("36 files")
    page.click("#check")
    report = page.locator("#report")
    sync_api.expect(report.locator("h3")).to_have_text("Dataset check: 36 images in 3 classes")
    sync_api.expect(report.locator("#class-counts tbody tr")).to_have_count(3)
    assert "few images" in report.inner_text()  # 12 per class: the check warns
    for name, value in {
        "epochs": "2",
        "fine_tune_epochs": "1",
        "fine_tune_at": "140",  # 12 photos a class: auto would train the head alone
        "image_size": "64",
        "batch_size": "8",
    }.items():
        page.fill(f"#p-{name}", value)
    page.select_option("#p-refit", "off")  # the curves below count the selection's epochs
    page.click("#start")
    page.wait_for_url("**/console/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    # Points appear on the curve while the job is still running.
    loss = page.locator("#loss-chart")
    sync_api.expect(loss).to_have_attribute("data-points", "2", timeout=300_000)
    with api(service) as c:
        assert c.get(f"/finetune/{job_id}").json()["status"] == "running"
        page.wait_for_selector('body[data-job-done="succeeded"]', timeout=300_000)
        job = c.get(f"/finetune/{job_id}").json()
        assert job["result"]["version"] == 2 and job["result"]["previous_version"] == 1
        assert c.get("/models/signs").json()["active_version"] == 2
    assert loss.get_attribute("data-points") == "3"
    assert loss.get_attribute("data-phases") == "head,fine_tune"
    shown_at = page.evaluate("window.convserveCurves.shownAt")
    delays = [
        round(shown_at[str(h["epoch"])] / 1000 - h["ended_at"], 3)
        for h in job["history"]
        if str(h["epoch"]) in shown_at
    ]
    record("epoch_end_to_curve_point_seconds", delays)
    assert delays and all(d >= 0 for d in delays)

    # The new version side by side with the one it replaced.
    compare = page.locator("#compare table.compare")
    sync_api.expect(compare).to_have_attribute("data-newer", "2")
    assert compare.get_attribute("data-older") == "1"
    assert compare.locator("tbody tr").count() == 1 + 3 * 3  # accuracy, then 3 per class
    # How training went: each phase's epochs and why it stopped, and what was chosen.
    choices = page.locator("#training-choices li")
    sync_api.expect(choices.first).to_contain_text("head: 2 of at most 2 epochs")
    assert "stopped because it reached its most epochs" in choices.first.inner_text()
    assert "Fine-tuning depth: given" in page.locator("#training-choices").inner_text()
    assert "No refit: given." in page.locator("#training-choices").inner_text()
    page.screenshot(path=str(ARTIFACTS / "job-finished.png"), full_page=True)

    # Roll back from the job page.
    page.click("text=Roll back to version 1")
    sync_api.expect(page.locator("#flash")).to_have_text("signs now serves version 1.")
    with api(service) as c:
        assert c.get("/models/signs").json()["active_version"] == 1
    # The job page still works once the job is over, from the stored history.
    page.reload()
    sync_api.expect(page.locator("#loss-chart")).to_have_attribute("data-points", "3")
    assert page.locator("#status").inner_text() == "succeeded"


def test_a_new_model_on_a_network_without_imagenet_weights(page, service, tmp_path):
    """LeNet-5 from the list: it trains from scratch at its own 32 px without being told."""
    folder = make_dataset(tmp_path / "patterns", classes=("hstripes", "checks"), per_class=10)
    page.goto("/console/train")
    use_key(page)
    page.check("input[name=target][value=new]")
    page.fill("#new-model", "patterns")
    page.select_option("#base", "lenet5")
    assert page.locator("#base option:checked").inner_text() == "LeNet-5 (from scratch)"
    page.set_input_files("#folder", str(folder))
    page.click("#check")
    sync_api.expect(page.locator("#report h3")).to_contain_text("20 images in 2 classes")
    page.fill("#p-epochs", "2")
    page.click("#start")
    page.wait_for_url("**/console/jobs/*")
    page.wait_for_selector('body[data-job-done="succeeded"]', timeout=120_000)
    with api(service) as c:
        detail = c.get("/models/patterns").json()
    assert detail["architecture"] == "lenet5" and detail["input_size"] == 32
    choices = page.locator("#training-choices").inner_text()
    assert "from scratch" in choices
    # 8 training photos per class: refit on all 20 once validation had chosen the epochs.
    assert "Refit on all 20 images (train " in choices
    assert "the validation figures are the selection run's" in choices
    # The model page says whose validation figures it shows.
    page.goto("/console/models/patterns")
    sync_api.expect(page.locator("#refit-note")).to_contain_text("refit on all 20 images")


def test_download_a_version_for_another_runtime(page, service, tmp_path):
    page.goto("/console/models/toy?version=2")
    sync_api.expect(page.locator("#export-button")).to_be_hidden()  # not without a key
    use_key(page)
    page.select_option("#export-format", "onnx")
    with page.expect_download(timeout=120_000) as info:
        page.click("#export-button")
    download = info.value
    assert download.suggested_filename == "toy-v2-onnx.zip"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = sorted(archive.namelist())
    assert names == ["toy-v2-onnx/README.md", "toy-v2-onnx/labels.txt", "toy-v2-onnx/model.onnx"]


def test_grow_a_dataset_relabel_train_from_it_and_trace_the_version(page, service, tmp_path):
    folder = make_dataset(tmp_path / "stripes", classes=("hstripes", "checks"), per_class=10)
    with api(service) as c:
        archive = zip_directory(folder)
        r = c.post("/datasets", data={"name": "stripes"}, files={"archive": ("s.zip", archive)})
        assert r.status_code == 201, r.text
    page.goto("/console/datasets")
    use_key(page)
    sync_api.expect(page.locator("#datasets-table")).to_contain_text("hstripes 10")
    page.click("text=stripes")
    page.wait_for_load_state()  # the page's script handles the picker below
    checks = page.locator(".class-section[data-class=checks]")
    sync_api.expect(checks.locator("[data-count]")).to_have_text("10")

    # Add a photo to a class with the picker: a new version, the page shows it.
    photo = tmp_path / "new-check.png"
    photo.write_bytes(image_bytes(pattern_image("checks", 32, seed=77)))
    checks.locator("input.add-files").set_input_files(str(photo))
    sync_api.expect(page.locator("#flash")).to_contain_text(
        "Added 1 image(s) to checks (version 2)"
    )
    sync_api.expect(checks.locator("[data-count]")).to_have_text("11")
    assert checks.locator("li[data-image] span", has_text="new-check.png").count() == 1

    # Relabel another: it moves to the other class, a third version.
    first = page.locator(".class-section[data-class=hstripes] li[data-image]").first
    image_id = first.get_attribute("data-image")
    first.locator("select.relabel").select_option("checks")
    sync_api.expect(page.locator("#flash")).to_contain_text("Moved to checks (version 3)")
    sync_api.expect(checks.locator("[data-count]")).to_have_text("12")
    assert checks.locator(f"li[data-image='{image_id}']").count() == 1
    sync_api.expect(page.locator("#shown-version")).to_have_text("3 (latest)")
    page.screenshot(path=str(ARTIFACTS / "dataset-page.png"), full_page=True)

    # Train from it: the Train page comes pre-filled with the stored dataset.
    page.click("#train-from")
    page.wait_for_url("**/console/train?dataset=stripes*")
    assert page.locator("input[name=source][value=stored]").is_checked()
    assert page.locator("#stored-dataset").input_value() == "stripes"
    page.check("input[name=target][value=new]")
    page.fill("#new-model", "stripes-net")
    page.select_option("#base", "lenet5")
    page.click("#check")
    sync_api.expect(page.locator("#report h3")).to_contain_text("21 images in 2 classes")
    page.fill("#p-epochs", "2")
    page.click("#start")
    page.wait_for_url("**/console/jobs/*")
    page.wait_for_selector('body[data-job-done="succeeded"]', timeout=120_000)

    # The new model version links back to the dataset version it learned from.
    page.goto("/console/models/stripes-net")
    link = page.locator("#versions a.dataset-link")
    sync_api.expect(link).to_have_text("stripes v3")
    link.click()
    page.wait_for_url("**/console/datasets/stripes?version=3")
    sync_api.expect(page.locator("#trained")).to_contain_text("stripes-net version 1")


@pytest.mark.parametrize(
    ("path", "ready"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")]
)
def test_the_api_reference_works_offline(browser, service, path, ready):
    """Swagger UI and ReDoc come from the package, and their pages' Content-Security-Policy
    stops any request to another host (ReDoc's sidebar asks a CDN for a logo)."""
    context = browser.new_context(base_url=service.url)
    tab = context.new_page()
    elsewhere: list[str] = []
    blocked: list[str] = []
    tab.on(
        "request",
        lambda req: elsewhere.append(req.url) if not req.url.startswith(service.url) else None,
    )
    tab.on(
        "requestfailed",
        lambda req: blocked.append(req.url) if "csp" in (req.failure or "").lower() else None,
    )
    tab.goto(path)
    tab.wait_for_selector(ready, timeout=30_000)
    assert tab.locator(ready).count() > 20  # every operation of the API
    assert "/datasets/{name}/images" in tab.content()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"reference{path.replace('/', '-')}.png"))
    context.close()
    sent = [u for u in elsewhere if not u.startswith(("data:", "blob:")) and u not in blocked]
    assert sent == []


def _train_loop_model(c: httpx.Client, tmp_path: Path) -> None:
    """Model "loop-net" (LeNet-5, a few seconds) on stored dataset "loop", capture on."""
    folder = make_dataset(tmp_path / "loop", classes=("checks", "hstripes"), per_class=10)
    r = c.post(
        "/datasets", data={"name": "loop"}, files={"archive": ("l.zip", zip_directory(folder))}
    )
    assert r.status_code == 201, r.text
    fields = {
        "dataset_name": "loop",
        "model": "loop-net",
        "base": "lenet5",
        "epochs": "2",
        "image_size": "32",
        "batch_size": "8",
    }
    r = c.post("/finetune", data=fields)
    assert r.status_code == 202, r.text
    job = wait_for(c, r.json()["job_id"], lambda j: j["status"] in ("succeeded", "failed"), 180)
    assert job["status"] == "succeeded", job
    r = c.put("/models/loop-net/capture", json={"below_score": 1.0, "sample_rate": 1.0})
    assert r.status_code == 200, r.text


def test_review_a_kept_prediction_with_the_keyboard_then_retrain(page, service, tmp_path):
    with api(service) as c:
        _train_loop_model(c, tmp_path)
        photo = image_bytes(pattern_image("checks", 32, seed=91))
        r = c.post("/predict", params={"model": "loop-net"}, files={"file": ("door.png", photo)})
        assert r.status_code == 200
        deadline = time.time() + 20
        while c.get("/review", params={"model": "loop-net"}).json()["total"] < 1:
            assert time.time() < deadline, "the prediction was not kept"
            time.sleep(0.2)

    page.goto("/console/review?model=loop-net")
    use_key(page)
    sync_api.expect(page.locator("#left")).to_have_text("1")
    sync_api.expect(page.locator("#review-meta")).to_contain_text("door.png")
    sync_api.expect(page.locator("#class-buttons button").first).to_contain_text("1 checks")
    page.keyboard.press("1")  # the first class: checks
    sync_api.expect(page.locator("#flash")).to_contain_text("Added to loop as checks (version 2)")
    sync_api.expect(page.locator("#left")).to_have_text("0")
    sync_api.expect(page.locator("#empty")).to_be_visible()
    with api(service) as c:
        dataset = c.get("/datasets/loop").json()
        assert dataset["latest_version"] == 2 and dataset["classes"]["checks"] == 11

    page.click("#retrain")
    page.wait_for_url("**/console/jobs/*")
    page.wait_for_selector('body[data-job-done="succeeded"]', timeout=180_000)
    # The two versions side by side on the same images, and which ones.
    sync_api.expect(page.locator("#same-images h3")).to_contain_text("On the same")
    sync_api.expect(page.locator("#same-images")).to_contain_text("did not train on")
    with api(service) as c:
        model = c.get("/models/loop-net").json()
        assert model["active_version"] == 2
        job = c.get("/finetune", params={"limit": 1}).json()["jobs"][0]
        assert job["dataset"]["version"] == 2 and job["params"]["epochs"] == 2
        r = c.post("/predict", params={"model": "loop-net"}, files={"file": ("x.png", photo)})
        assert r.json()["version"] == 2

    # The dataset's label health, from the report the retraining job wrote.
    page.goto("/console/datasets/loop/health?version=2")
    sync_api.expect(page.locator("#judge")).to_have_text("loop-net version 2")
    sync_api.expect(page.locator("#h-images")).to_have_text("21")


def test_start_a_shadow_rollout_and_watch_agreement_grow(page, service, tmp_path):
    # A second version of the toy model to put in the shadow of the first.
    with api(service) as c:
        before = c.get("/models/toy").json()
        assert len(before["versions"]) >= 2, before
        candidate = next(v for v in before["versions"] if v != before["active_version"])
    page.goto("/console/models/toy")
    use_key(page)
    page.select_option("#rollout-version", str(candidate))
    page.select_option("#rollout-mode", "shadow")
    page.fill("#rollout-share", "1")
    page.click("#rollout-start")
    sync_api.expect(page.locator("#rollout-state")).to_contain_text("shadow rollout of version")
    photo = image_bytes(pattern_image("checks", 32, seed=5))
    with api(service) as c:
        for _ in range(12):
            r = c.post("/predict", params={"model": "toy"}, files={"file": ("p.png", photo)})
            assert r.json()["version"] == before["active_version"]  # shadow: never answers
    row = page.locator(f"#rollout-figures tr[data-version='{candidate}']")
    sync_api.expect(row.locator("td.requests")).to_have_text("12", timeout=15_000)
    sync_api.expect(row.locator("td.agreement")).not_to_have_text("—")
    page.click("#rollout-abort")
    sync_api.expect(page.locator("#rollout-state")).to_contain_text("ended: aborted")
