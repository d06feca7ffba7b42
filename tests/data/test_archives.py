import io
import tarfile
import zipfile

import pytest

from app.data.archives import ArchiveError, ArchiveLimits, extract_archive


def _zip(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _tar(entries: dict[str, bytes], mode="w:gz", link: tuple[str, str, bytes] | None = None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type = link[2]
            info.linkname = link[1]
            tf.addfile(info)
    return buf.getvalue()


def _extract(tmp_path, data: bytes, limits=None):
    path = tmp_path / "upload"
    path.write_bytes(data)
    out = tmp_path / "out"
    count = extract_archive(path, out, limits)
    return out, count


@pytest.mark.parametrize(
    "pack", [_zip, lambda e: _tar(e, "w"), lambda e: _tar(e, "w:gz")], ids=["zip", "tar", "tar.gz"]
)
def test_good_archives_extract_without_junk(tmp_path, pack):
    out, count = _extract(
        tmp_path,
        pack(
            {
                "root/cats/a.jpg": b"1",
                "root/dogs/b.jpg": b"2",
                "root/.DS_Store": b"x",
                "__MACOSX/root/._a.jpg": b"x",
                "root/cats/.hidden.jpg": b"x",
            }
        ),
    )
    assert count == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "root/cats/a.jpg",
        "root/dogs/b.jpg",
    ]


@pytest.mark.parametrize(
    "data, code",
    [
        (b"just some text, not an archive", "invalid_archive"),
        (b"", "invalid_archive"),
        (_zip({"a/x.jpg": b"1"})[:30], "invalid_archive"),
        (_zip({"../evil.jpg": b"1"}), "unsafe_archive"),
        (_zip({"/etc/evil.jpg": b"1"}), "unsafe_archive"),
        (_tar({"a/../../evil.jpg": b"1"}), "unsafe_archive"),
        (_zip({"a/x.jpg": b"1"}, links={"a/link.jpg": "/etc/passwd"}), "unsafe_archive"),
        (
            _tar({"a/x.jpg": b"1"}, link=("a/l.jpg", "/etc/passwd", tarfile.SYMTYPE)),
            "unsafe_archive",
        ),
        (_tar({"a/x.jpg": b"1"}, link=("a/h.jpg", "a/x.jpg", tarfile.LNKTYPE)), "unsafe_archive"),
    ],
    ids=[
        "text",
        "empty",
        "truncated-zip",
        "dotdot",
        "absolute",
        "tar-dotdot",
        "zip-symlink",
        "tar-symlink",
        "tar-hardlink",
    ],
)
def test_bad_archives_are_refused(tmp_path, data, code):
    with pytest.raises(ArchiveError) as info:
        _extract(tmp_path, data)
    assert info.value.code == code and info.value.status == 400
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path.parent / "evil.jpg").exists()


def test_zip_bomb_is_stopped_by_the_byte_cap(tmp_path):
    bomb = _zip({"a/zeros.jpg": b"\0" * 5_000_000, "b/zeros.jpg": b"\0" * 5_000_000})
    assert len(bomb) < 50_000
    with pytest.raises(ArchiveError) as info:
        _extract(tmp_path, bomb, ArchiveLimits(max_bytes=1_000_000))
    assert (info.value.code, info.value.status) == ("archive_too_large", 413)


def test_file_count_cap(tmp_path):
    many = _zip({f"a/{i}.jpg": b"1" for i in range(30)})
    with pytest.raises(ArchiveError) as info:
        _extract(tmp_path, many, ArchiveLimits(max_files=10))
    assert info.value.code == "archive_too_large"


def test_a_zip_name_flagged_utf8_that_is_not_is_a_corrupt_archive(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/\u00e9.jpg", b"x")  # stored as UTF-8, with the UTF-8 flag
    raw = buf.getvalue().replace("\u00e9".encode(), b"\xa0\xa0")  # now invalid UTF-8
    archive = tmp_path / "bad.zip"
    archive.write_bytes(raw)
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, tmp_path / "out")
    assert info.value.code == "invalid_archive"
