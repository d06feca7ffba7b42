import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.bootstrap import bootstrap
from app.storage.registry import LOCK_FILE, ModelRegistry
from tests.helpers import image_bytes, pattern_image


@pytest.mark.slow  # 10 s: builds and writes both built-in models
def test_fresh_registry_bootstraps_both_imagenet_models(settings_for):
    settings = settings_for(
        served_models=["resnet50", "mobilenet_v2"], default_model="mobilenet_v2"
    )
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        for name in ("resnet50", "mobilenet_v2"):
            m = models[name]
            assert m["status"] == "ready" and m["active_version"] == 1
            assert len(m["class_names"]) == 1000 and m["input_size"] == 32
            assert m["trained"] is False  # CONVSERVE_PRETRAINED=none: random weights
            # ... with the real ImageNet labels, shipped with the package (no download).
            assert m["class_names"][281] == "tabby" and m["class_names"][999] == "toilet_tissue"
        detail = c.get("/models/resnet50").json()["version_details"][0]
        assert detail["source"] == "bootstrap"
        png = image_bytes(pattern_image("checks", 50), "PNG")
        for name in ("resnet50", "mobilenet_v2"):
            r = c.post("/predict", params={"model": name, "top_k": 3}, files={"file": ("a", png)})
            assert r.status_code == 200 and len(r.json()["predictions"][0]["top"]) == 3
    # A restart serves the same versions without bootstrapping again.
    with TestClient(create_app(settings)) as c:
        versions = {m["name"]: m["versions"] for m in c.get("/models").json()["models"]}
        assert versions == {"resnet50": [1], "mobilenet_v2": [1]}


def test_bootstrapped_resnet_is_our_network_from_its_blocks(settings_for, tmp_path):
    import keras

    from app.storage.registry import ModelRegistry

    settings = settings_for(served_models=["resnet50"], default_model="resnet50")
    with TestClient(create_app(settings)):
        pass
    model = keras.saving.load_model(ModelRegistry(tmp_path / "models").model_path("resnet50", 1))
    inner = model.get_layer("resnet50_imagenet")
    assert inner.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert inner.count_params() == 25_636_712


def test_replicas_bootstrapping_at_once_write_one_version(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    with ThreadPoolExecutor(2) as pool:
        versions = list(
            pool.map(lambda _: bootstrap(registry, "mobilenet_v2", "none", 32), range(2))
        )
    assert versions == [1, 1]
    assert registry.versions("mobilenet_v2") == [1]


def test_registry_lock_excludes_another_process(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    probe = (
        "import fcntl, sys\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    try:\n"
        "        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    except BlockingIOError:\n"
        "        sys.exit(3)\n"
    )
    lock = str(tmp_path / "models" / "m" / LOCK_FILE)
    with registry.locked("m"):
        held = subprocess.run([sys.executable, "-c", probe, lock])
    free = subprocess.run([sys.executable, "-c", probe, lock])
    assert (held.returncode, free.returncode) == (3, 0)


def test_serving_threads_are_named_for_their_role(settings_for):
    """``top -H`` (and the serving benchmark) tell decoding from inference by name."""
    from pathlib import Path

    settings = settings_for(served_models=["mobilenet_v2"], default_model="mobilenet_v2")
    png = image_bytes(pattern_image("checks", 50), "PNG")
    with TestClient(create_app(settings)) as c:
        assert c.post("/predict", files={"file": ("a.png", png)}).status_code == 200
        names = set()
        for task in Path("/proc/self/task").iterdir():
            try:
                names.add((task / "comm").read_text().strip())
            except OSError:  # the thread ended meanwhile
                continue
    assert {"cs-decode", "cs-infer", "cs-load"} <= names
