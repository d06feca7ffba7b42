import json
import os

import pytest

from app.data.datasets import DatasetError, find_class_root, load_datasets, prepare_dataset
from tests.helpers import make_dataset


def test_prepare_then_load_gives_both_splits(tmp_path):
    src = make_dataset(tmp_path / "src", per_class=10)
    summary = prepare_dataset(src, tmp_path / "out", 16, validation_split=0.2)
    assert summary.class_names == ["hstripes", "vstripes"]
    assert summary.counts == {"hstripes": 10, "vstripes": 10}
    train, val, val_files = load_datasets(
        tmp_path / "out", 2, 16, batch_size=4, validation_split=0.2
    )
    n_train = sum(int(x.shape[0]) for x, _ in train)
    n_val = sum(int(x.shape[0]) for x, _ in val)
    assert (n_train, n_val) == (16, 4)
    # The validation set is read in a fixed order, matching its file list.
    labels = [int(y) for _, batch in val for y in batch.numpy()]
    assert labels == [int(os.path.basename(os.path.dirname(f))) for f in val_files]
    assert labels == [int(y) for _, batch in val for y in batch.numpy()]
    images, _labels = next(iter(train))
    assert images.shape[1:] == (16, 16, 3) and images.dtype.name == "float32"
    assert float(images.numpy().max()) > 1.0  # raw pixels, not scaled


def test_bad_files_are_skipped_and_reported(tmp_path):
    src = make_dataset(tmp_path / "src", per_class=6)
    (src / "hstripes" / "notes.txt").write_text("not an image")
    (src / "hstripes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (src / "vstripes" / "empty.png").write_bytes(b"")
    (src / "vstripes" / ".DS_Store").write_bytes(b"junk")
    (src / "__MACOSX").mkdir()
    (src / "__MACOSX" / "._x.jpg").write_bytes(b"junk")
    summary = prepare_dataset(src, tmp_path / "out", 16)
    reasons = {s.path: s.reason for s in summary.skipped}
    assert set(reasons) == {"hstripes/notes.txt", "hstripes/broken.jpg", "vstripes/empty.png"}
    assert "empty" in reasons["vstripes/empty.png"]
    assert summary.counts == {"hstripes": 6, "vstripes": 6}


def test_unicode_and_space_class_names_and_one_root_folder(tmp_path):
    names = ("chat noir", "café ☕")
    make_dataset(tmp_path / "src" / "my photos", per_class=5, names=names)
    assert find_class_root(tmp_path / "src").name == "my photos"
    summary = prepare_dataset(tmp_path / "src", tmp_path / "out", 16)
    assert summary.class_names == sorted(names)
    assert sorted(os.listdir(tmp_path / "out")) == ["0000", "0001", "sources.json"]
    # Each prepared image remembers the uploaded file it came from.
    sources = json.loads((tmp_path / "out" / "sources.json").read_text())
    assert len(sources) == 10 and sources["0000/000000.png"].startswith("café ☕/")


@pytest.mark.parametrize(
    "setup, code",
    [
        (lambda root: (root / "a.png").write_bytes(b""), "no_classes"),
        (lambda root: make_dataset(root, classes=("dark",), per_class=5), "too_few_classes"),
        (lambda root: (make_dataset(root, per_class=5), (root / "empty").mkdir()), "empty_class"),
        (lambda root: make_dataset(root, per_class=3), "too_few_images"),
    ],
    ids=["no-classes", "one-class", "empty-class", "too-few"],
)
def test_unusable_datasets_raise_clear_errors(tmp_path, setup, code):
    root = tmp_path / "src"
    root.mkdir()
    setup(root)
    with pytest.raises(DatasetError) as info:
        prepare_dataset(root, tmp_path / "out", 16, validation_split=0.2)
    assert info.value.code == code
    assert info.value.message


def test_class_of_corrupt_files_only_is_reported_as_empty(tmp_path):
    root = make_dataset(tmp_path / "src", per_class=5)
    (root / "bad").mkdir()
    for i in range(5):
        (root / "bad" / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as info:
        prepare_dataset(root, tmp_path / "out", 16)
    assert info.value.code == "empty_class" and "'bad'" in info.value.message
