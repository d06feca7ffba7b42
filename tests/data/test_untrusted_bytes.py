"""Property tests (hypothesis) for the parsers that take bytes from outside: archive
extraction, image decoding, and the form and query fields of /finetune and /predict.

Whatever the input, each either works or raises the service's own error with a stable
code, never another exception; and extraction never writes outside its folder.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.data.archives import ArchiveError, ArchiveLimits, extract_archive
from app.data.images import ImageError, load_image

FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is reproducible
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ARCHIVE_CODES = {"invalid_archive", "unsafe_archive", "archive_too_large"}
IMAGE_CODES = {"empty_file", "invalid_image", "image_too_large", "unsupported_media_type"}

# -- archives -------------------------------------------------------------------------------

_segment = st.one_of(
    st.sampled_from(["..", ".", "", "cls", "a b", "ü", "__MACOSX", ".DS_Store", "x.jpg"]),
    st.text(min_size=1, max_size=12),
)
member_names = st.one_of(
    st.lists(_segment, min_size=1, max_size=5).map("/".join),
    st.lists(_segment, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.lists(_segment, min_size=1, max_size=3).map("\\".join),
    st.integers(30, 120).map(lambda depth: "/".join(["d"] * depth) + "/f.jpg"),  # deep
    st.text(min_size=1, max_size=300),  # odd and long names
)
members = st.lists(st.tuples(member_names, st.binary(max_size=64)), min_size=0, max_size=25)


def _pack(kind: str, entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the test
            for name, data in entries:
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz" if kind == "tgz" else "w") as tf:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    if cut is not None and out:
        del out[cut % len(out) :]
    return bytes(out)


def _files_outside(root: Path, allowed: set[Path], inside: Path) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if path not in allowed and inside not in path.parents:
                found.append(path)
    return found


@FAST
@given(
    kind=st.sampled_from(["zip", "tar", "tgz"]),
    entries=members,
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 10**6),
)
def test_extraction_of_any_archive_raises_only_its_own_errors(
    tmp_path_factory, kind, entries, edits, cut
):
    try:
        data = _pack(kind, entries)
    except (ValueError, UnicodeEncodeError, IndexError, tarfile.TarError):
        # A name the archive format itself cannot hold (zipfile cuts a name at its first
        # NUL and fails on what is left empty with an IndexError).
        assume(False)
    data = _mutate(data, edits, cut)
    root = tmp_path_factory.mktemp("x")
    archive = root / "upload"
    archive.write_bytes(data)
    dest = root / "out" / "dataset"
    try:
        count = extract_archive(archive, dest, ArchiveLimits(max_files=20, max_bytes=4096))
    except ArchiveError as exc:
        assert exc.code in ARCHIVE_CODES, exc.code
        assert exc.status in (400, 413)
    else:
        assert count >= 0
    assert _files_outside(root, {archive}, dest) == []
    assert not any(p.is_symlink() for p in root.rglob("*"))


@FAST
@given(count=st.integers(21, 200), kind=st.sampled_from(["zip", "tgz"]))
def test_archives_with_too_many_files_are_refused(tmp_path_factory, count, kind):
    root = tmp_path_factory.mktemp("n")
    archive = root / "upload"
    archive.write_bytes(_pack(kind, [(f"c{i % 3}/{i}.jpg", b"x") for i in range(count)]))
    with pytest.raises(ArchiveError) as err:
        extract_archive(archive, root / "out", ArchiveLimits(max_files=20, max_bytes=10**6))
    assert err.value.code == "archive_too_large" and err.value.status == 413


# -- images ---------------------------------------------------------------------------------

FORMATS = {"JPEG": "RGB", "PNG": "RGBA", "BMP": "RGB", "GIF": "P", "WEBP": "RGB"}


@st.composite
def encoded_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA").convert(FORMATS[fmt] if fmt != "GIF" else "RGB")
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return fmt, buf.getvalue()


@FAST
@given(image=encoded_images(), size=st.integers(8, 64))
def test_every_accepted_format_decodes_to_the_model_input(image, size):
    _, data = image
    pixels = load_image(data, size)
    assert pixels.shape == (size, size, 3)
    assert np.isfinite(pixels).all()


@FAST
@given(
    image=encoded_images(),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.integers(0, 10**6),
)
def test_mutated_images_decode_or_raise_an_image_error(image, edits, cut):
    _, data = image
    try:
        pixels = load_image(_mutate(data, edits, cut), 32)
    except ImageError as exc:
        assert exc.code in IMAGE_CODES and exc.status in (400, 413, 415), exc.code
    else:
        assert pixels.shape == (32, 32, 3)


@FAST
@given(data=st.binary(max_size=512))
def test_random_bytes_are_not_images(data):
    with pytest.raises(ImageError) as err:
        load_image(data, 32)
    assert err.value.code in IMAGE_CODES


# -- form and query fields --------------------------------------------------------------------

field_values = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "true", "false", "1e400", "-0", "0x10", " 5", "\uff15", "\x00"]),
)
TRAIN_FIELDS = [
    "model", "base", "epochs", "fine_tune_epochs", "fine_tune_at", "image_size", "batch_size",
    "learning_rate", "fine_tune_learning_rate", "validation_split", "early_stopping_patience",
    "max_minutes", "class_weight", "augment", "flip", "rotation", "zoom", "translation",
    "contrast", "brightness", "from_scratch", "seed", "promote",
]  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import toy_registry, toy_settings

    root = tmp_path_factory.mktemp("forms")
    toy_registry(root)
    with TestClient(create_app(toy_settings(root, max_queued_jobs=1000))) as test_client:
        yield test_client


def _assert_error_or(response, *ok: int) -> None:
    if response.status_code in ok:
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"], body


@settings(FAST, max_examples=100)
@given(fields=st.dictionaries(st.sampled_from(TRAIN_FIELDS), field_values, max_size=6))
def test_finetune_form_fields_are_checked_before_anything_is_queued(client, fields):
    r = client.post("/finetune", data=fields, files={"dataset": ("d.zip", b"not an archive")})
    # With a bad archive, the best a request can get is the archive's own 400.
    _assert_error_or(r)
    assert r.json()["code"] in {"invalid_parameters", "invalid_archive"}, r.text


@settings(FAST, max_examples=100)
@given(query=st.dictionaries(st.sampled_from(["model", "version", "top_k", "x"]), field_values))
def test_predict_query_fields_answer_with_a_code(client, query):
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, "PNG")
    r = client.post("/predict", params=query, files={"file": ("a.png", png.getvalue())})
    _assert_error_or(r, 200)
    if r.status_code == 200:
        assert r.json()["predictions"][0]["top"], r.text
