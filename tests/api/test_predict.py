import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from tests.helpers import image_bytes, pattern_image


def _png(kind="hstripes", size=40):
    return image_bytes(pattern_image(kind, size), "PNG")


def test_predict_several_files_returns_probabilities_per_file(client):
    files = [
        ("file", ("a.png", _png("hstripes"), "image/png")),
        ("file", ("b.jpg", image_bytes(pattern_image("checks", 300), "JPEG"), "image/jpeg")),
    ]
    r = client.post("/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "toy" and body["version"] == 1
    assert [p["filename"] for p in body["predictions"]] == ["a.png", "b.jpg"]
    for p in body["predictions"]:
        assert len(p["top"]) == 2
        assert {t["label"] for t in p["top"]} == {"circle", "square"}
        assert sum(t["score"] for t in p["top"]) == pytest.approx(1.0, abs=1e-5)
        assert p["top"][0]["score"] >= p["top"][1]["score"]


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "LA"])
def test_every_image_mode_is_accepted(client, mode):
    img = pattern_image("vstripes", 20)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    else:
        img = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    r = client.post("/predict", files={"file": (f"x.{fmt.lower()}", image_bytes(img, fmt))})
    assert r.status_code == 200, r.text


def test_one_pixel_gif_and_webp_work(client):
    for fmt in ("GIF", "WEBP", "BMP"):
        data = image_bytes(Image.new("RGB", (1, 1), (200, 10, 10)), fmt)
        assert client.post("/predict", files={"file": ("p", data)}).status_code == 200


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "empty_file"),
        (b"%PDF-1.4 not an image", 400, "invalid_image"),
        (image_bytes(pattern_image("dark", 64), "JPEG")[:200], 400, "invalid_image"),
        (image_bytes(pattern_image("dark", 8), "TIFF"), 415, "unsupported_media_type"),
        (image_bytes(Image.new("L", (9000, 9000)), "PNG"), 413, "image_too_large"),
    ],
    ids=["empty", "not-image", "truncated", "tiff", "bomb"],
)
def test_bad_images_get_clear_errors(client, data, status, code):
    r = client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert r.status_code == status
    assert r.json()["code"] == code
    assert "photo.jpg" in r.json()["detail"] or code in ("empty_file",)


def test_file_over_the_byte_limit_is_413(registry, settings_for):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings_for(max_image_bytes=1000))) as c:
        r = c.post("/predict", files={"file": ("big.png", _png(size=300))})
    assert (r.status_code, r.json()["code"]) == (413, "file_too_large")


def test_too_many_files_is_413(client):
    files = [("file", (f"{i}.png", _png(), "image/png")) for i in range(33)]
    r = client.post("/predict", files=files)
    assert (r.status_code, r.json()["code"]) == (413, "too_many_files")


def test_no_file_or_not_multipart(client):
    r = client.post("/predict")
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters")
    assert "file" in r.json()["detail"]
    r = client.post("/predict", json={"file": "x"})
    assert r.status_code in (415, 422) and r.json()["code"] in (
        "unsupported_media_type",
        "invalid_parameters",
    )


@pytest.mark.parametrize(
    "params, status, code",
    [
        ({"model": "nope"}, 404, "model_not_found"),
        ({"version": 7}, 404, "version_not_found"),
        ({"top_k": 0}, 422, "invalid_parameters"),
        ({"version": "abc"}, 422, "invalid_parameters"),
    ],
)
def test_bad_parameters(client, params, status, code):
    r = client.post("/predict", params=params, files={"file": ("a.png", _png())})
    assert (r.status_code, r.json()["code"]) == (status, code)


def test_explicit_older_version_is_served_on_demand(client, registry):
    from tests.helpers import write_toy_version

    write_toy_version(registry, "toy", ["circle", "square"], seed=1)  # v2, not active
    r = client.post("/predict", params={"version": 2}, files={"file": ("a.png", _png())})
    assert r.status_code == 200 and r.json()["version"] == 2
    r = client.post("/predict", files={"file": ("a.png", _png())})
    assert r.json()["version"] == 1


def test_top_k_larger_than_classes_is_capped(client):
    r = client.post("/predict", params={"top_k": 50}, files={"file": ("a.png", _png())})
    assert len(r.json()["predictions"][0]["top"]) == 2


def test_exif_orientation_changes_what_the_model_sees(client):
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = client.post("/predict", files={"file": ("a.jpg", image_bytes(img, "JPEG"))}).json()
    rotated = client.post(
        "/predict", files={"file": ("a.jpg", image_bytes(img, "JPEG", exif=exif))}
    ).json()
    assert plain["predictions"][0]["top"] != rotated["predictions"][0]["top"]


def test_an_image_sent_the_wrong_way_gets_told_how_to_send_it(client):
    PNG = image_bytes(pattern_image("checks", 32))
    raw = client.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
    assert raw.status_code == 415 and raw.json()["code"] == "unsupported_media_type"
    assert "multipart/form-data, not image/png" in raw.json()["detail"]
    assert "curl -F file=@photo.jpg" in raw.json()["detail"]
    renamed = client.post("/predict", files={"image": ("a.png", PNG)})
    assert renamed.status_code == 422 and renamed.json()["code"] == "invalid_parameters"
    assert "image parts named 'file'" in renamed.json()["detail"]
    archive = client.post("/finetune", content=b"PK", headers={"Content-Type": "application/zip"})
    assert archive.status_code in (415, 422), archive.text


def test_the_fake_model_answers_through_the_real_request_path(fake_registry, settings_for):
    """The route tests' fake model (tests/fakes.py) goes through the same batcher and
    request path: a dark image is its first class, a bright one its second."""
    with TestClient(create_app(settings_for())) as c:
        dark = image_bytes(Image.new("RGB", (40, 40), (10, 10, 10)))
        bright = image_bytes(Image.new("RGB", (40, 40), (250, 250, 250)))
        r = c.post("/predict", files=[("file", ("d.png", dark)), ("file", ("b.png", bright))])
    assert r.status_code == 200, r.text
    tops = [p["top"][0] for p in r.json()["predictions"]]
    assert [t["label"] for t in tops] == ["circle", "square"]
    assert [t["score"] for t in tops] == pytest.approx([0.9, 0.9])
