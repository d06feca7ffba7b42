"""POST /datasets/check: the report a fine-tuning job would use, with nothing kept."""

import io
import zipfile

from fastapi.testclient import TestClient

from app.main import create_app
from tests.helpers import make_dataset, zip_directory


def _check(client, data: bytes, **headers):
    return client.post("/datasets/check", files={"dataset": ("d.zip", data)}, headers=headers)


def test_report_lists_classes_skipped_files_duplicates_and_warnings(client, tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12, size=24)
    # A smaller class made of copies of five images of the others: imbalance, duplicates.
    (root / "tiny").mkdir()
    copies = sorted((root / "hstripes").iterdir())[:3] + sorted((root / "vstripes").iterdir())[:2]
    for n, source in enumerate(copies):
        (root / "tiny" / f"{n}{source.suffix}").write_bytes(source.read_bytes())
    (root / "hstripes" / "notes.txt").write_text("not an image")
    r = _check(client, zip_directory(root))
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["class_names"] == ["hstripes", "tiny", "vstripes"]
    assert report["counts"] == {"hstripes": 12, "tiny": 5, "vstripes": 12}
    assert report["images"] == 29
    assert report["skipped"] == [
        {"path": "hstripes/notes.txt", "reason": "not an image we can read"}
    ]
    assert sorted(report["duplicates"][0]) == ["hstripes/hstripes_000.png", "tiny/0.png"]
    assert len(report["duplicates"]) == 5
    warnings = " | ".join(report["warnings"])
    assert "imbalanced" in warnings and "'tiny' has 5 images" in warnings
    assert "5 files are exact copies" in warnings and "1 files are not usable" in warnings
    data_dir = client.app.state.settings.data_dir
    assert not list((data_dir / "checks").iterdir()), "the check left files behind"


def test_check_gives_the_errors_finetune_gives(client, tmp_path):
    one = make_dataset(tmp_path / "one", classes=("hstripes",), per_class=6, size=24)
    r = _check(client, zip_directory(one))
    assert (r.status_code, r.json()["code"]) == (400, "too_few_classes")
    assert "'hstripes'" in r.json()["detail"]
    r = _check(client, b"not an archive at all")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_archive")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil/a.png", b"x")
    assert _check(client, buf.getvalue()).json()["code"] == "unsafe_archive"


def test_check_needs_the_admin_key(registry, settings_for, tmp_path):
    data = zip_directory(make_dataset(tmp_path / "ds", per_class=6, size=24))
    with TestClient(create_app(settings_for(api_key="k", run_jobs=False))) as c:
        assert _check(c, data).status_code == 401
        assert _check(c, data, Authorization="Bearer k").status_code == 200
