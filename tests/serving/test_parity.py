"""Serving feeds the model exactly what training fed it."""

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.data.datasets import load_directory, prepare_dataset
from app.data.images import load_image
from app.main import create_app
from app.storage.registry import ModelRegistry
from tests.helpers import image_bytes, make_dataset, pattern_image, run_cli


def _mixed_files(root):
    """Photos in assorted formats, modes and sizes, with an EXIF rotation."""
    folder = root / "a"
    folder.mkdir(parents=True)
    from PIL import Image

    rotated = Image.Exif()
    rotated[0x0112] = 8
    specs = [
        (pattern_image("hstripes", 300).convert("CMYK"), "JPEG", {}),
        (pattern_image("checks", 17).convert("P"), "PNG", {}),
        (pattern_image("vstripes", 90).convert("RGBA"), "WEBP", {}),
        (pattern_image("dark", 1000), "JPEG", {"exif": rotated}),
        (pattern_image("checks", 64).convert("L"), "BMP", {}),
    ]
    names = []
    for i, (img, fmt, kw) in enumerate(specs):
        name = f"{i}.{fmt.lower()}"
        (folder / name).write_bytes(image_bytes(img, fmt, **kw))
        names.append(name)
    (root / "b").mkdir()
    for i in range(5):
        pattern_image("dark", 40, seed=i).save(root / "b" / f"{i}.png")
    return folder, names


def test_training_pipeline_and_serving_path_give_the_same_tensor(tmp_path):
    folder, names = _mixed_files(tmp_path / "src")
    prepare_dataset(tmp_path / "src", tmp_path / "prep", 48, validation_split=0, min_images=1)
    ds = load_directory(tmp_path / "prep", 2, 48, batch_size=64)
    train_images = next(iter(ds))[0].numpy()[: len(names)]  # class "a" comes first, in order
    served = np.stack([load_image((folder / n).read_bytes(), 48) for n in names])
    assert train_images.shape == served.shape
    assert np.abs(train_images - served.astype(np.float32)).mean() < 1 / 255


@pytest.mark.slow  # a training through the command (17 s)
def test_cli_trained_model_serves_the_same_probabilities_as_keras(tmp_path, settings_for):
    data = make_dataset(tmp_path / "data", per_class=10, size=40)
    out = run_cli(
        tmp_path,
        "train",
        "--data",
        str(data),
        "--model",
        "shapes",
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "0",
        "--image-size",
        "48",
        env_extra={"CONVSERVE_PRETRAINED": "none"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"version": 1' in out.stdout.strip().splitlines()[-1]

    registry = ModelRegistry(tmp_path / "models")
    model = keras.saving.load_model(registry.model_path("shapes", 1))
    files = [
        image_bytes(pattern_image(k, 33 + i, seed=i), "JPEG")
        for i, k in enumerate(["hstripes", "vstripes", "checks", "dark"])
    ]
    direct = model.predict(
        np.stack([load_image(f, 48) for f in files]).astype("float32"), verbose=0
    )

    settings = settings_for(served_models=["shapes"], default_model="shapes")
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/predict",
            params={"top_k": 2},
            files=[("file", (f"{i}.jpg", f)) for i, f in enumerate(files)],
        )
    assert r.status_code == 200
    classes = registry.metadata("shapes", 1)["class_names"]
    for row, pred in zip(direct, r.json()["predictions"], strict=True):
        assert pred["top"][0]["label"] == classes[int(np.argmax(row))]
        for entry in pred["top"]:
            assert abs(entry["score"] - float(row[entry["index"]])) < 1e-4
