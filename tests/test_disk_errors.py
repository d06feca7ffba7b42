"""A write the disk refuses becomes the service's error with a stable code; other errors
pass unchanged. (The real disks, full and read-only, are in tests/jobs/test_shutdown.py.)"""

from __future__ import annotations

import errno
import os

import pytest

from app.errors import ConvserveError, writing_to
from app.storage.registry import ModelRegistry


@pytest.mark.parametrize(
    ("number", "code", "status"),
    [
        (errno.ENOSPC, "storage_full", 507),
        (errno.EDQUOT, "storage_full", 507),
        (errno.EROFS, "storage_not_writable", 503),
        (errno.EACCES, "storage_not_writable", 503),
    ],
)
def test_refused_writes_get_a_code_even_when_wrapped(number, code, status):
    def keras_like_save() -> None:
        try:
            raise OSError(number, os.strerror(number))
        except OSError as exc:
            raise ValueError("could not save the model") from exc  # as Keras wraps it

    with pytest.raises(ConvserveError) as err, writing_to("the model registry"):
        keras_like_save()
    assert (err.value.code, err.value.status) == (code, status)
    assert "the model registry" in err.value.message and os.strerror(number) in err.value.message


def test_other_errors_pass_unchanged():
    with pytest.raises(FileNotFoundError), writing_to("the model registry"):
        raise FileNotFoundError(errno.ENOENT, "gone")


def test_a_version_the_disk_refuses_leaves_nothing(tmp_path):
    registry = ModelRegistry(tmp_path / "models")

    def save(folder):
        (folder / "model.keras").write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(ConvserveError) as err:
        registry.write_version("m", save, {"class_names": ["a"]})
    assert err.value.code == "storage_full"
    assert list((tmp_path / "models" / "m").iterdir()) == []
    assert registry.versions("m") == []
