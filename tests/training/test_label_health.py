"""The label-health report on images whose right answer is known: flipped labels are the
suspects, a resized copy in another class is a near duplicate, and the confused pair is
the flipped one."""

from __future__ import annotations

import io

import keras
import numpy as np
from PIL import Image, ImageDraw

from app.training.health import HealthImage, label_health, near_duplicates, perceptual_hashes


def _photo(brightness: int, seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(brightness, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(flipped: set[int]) -> list[HealthImage]:
    images = []
    for n in range(40):
        label = "dark" if n < 20 else "bright"
        data = _photo(40 if label == "dark" else 210, n)
        if n in flipped:
            label = "bright" if label == "dark" else "dark"
        images.append(HealthImage(f"id{n:02d}", label, f"{n}.png", lambda data=data: data))
    return images


def _mean_colour_model(size: int = 32) -> keras.Model:
    """Features = the mean colour (the layer a transfer model's head reads is avg_pool)."""
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))


def test_flipped_labels_are_the_suspects_and_the_confused_pair() -> None:
    report = label_health(_mean_colour_model(), _images({3, 27}), ["bright", "dark"], 32)
    assert {s["id"] for s in report["suspects"]} == {"id03", "id27"}
    first = report["suspects"][0]
    assert first["guess"] != first["label"] and first["label_score"] < 0.5
    assert report["suspects_found"] == 2 and report["out_of_fold_accuracy"] == 0.95
    assert {(c["label"], c["guess"]) for c in report["confused"]} == {
        ("bright", "dark"),
        ("dark", "bright"),
    }
    assert "5-fold" in report["method"]["predictions"]


def test_clean_labels_have_no_suspect() -> None:
    report = label_health(_mean_colour_model(), _images(set()), ["bright", "dark"], 32)
    assert report["suspects"] == [] and report["out_of_fold_accuracy"] == 1.0


def test_a_resized_copy_is_a_near_duplicate_across_classes() -> None:
    scene = Image.new("RGB", (256, 256), (200, 180, 160))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((30, 40, 140, 150), fill=(40, 60, 90))
    draw.rectangle((150, 120, 240, 230), fill=(220, 40, 40))
    draw.line((0, 250, 250, 0), fill=(10, 10, 10), width=9)
    small = scene.resize((180, 180))  # the same photo, smaller: other bytes

    def png(img: Image.Image) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        return buffer.getvalue()

    images = [
        HealthImage("a", "cats", "a.png", lambda: png(scene)),
        HealthImage("b", "dogs", "b.png", lambda: png(small)),
        HealthImage("c", "dogs", "c.png", lambda: _photo(128, 1, 64)),
    ]
    pairs = near_duplicates(perceptual_hashes(images), images)
    assert [(p["a"], p["b"], p["across_classes"]) for p in pairs] == [("a", "b", True)]
