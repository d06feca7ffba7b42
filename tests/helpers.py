"""Images and datasets made in code for the tests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# Real photos and weights live beside the checkout (../shared); CONVSERVE_SHARED_DIR
# points elsewhere. Tests that need them skip, saying so, where they are missing.
SHARED = Path(
    os.environ.get("CONVSERVE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
SIGNS_DIR = SHARED / "data" / "signs" / "train"
MOBILENET_WEIGHTS = (
    SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)


def pattern_image(kind: str, size: int = 32, seed: int = 0) -> Image.Image:
    """A visually distinct, slightly noisy image of one of a few kinds."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), dtype=np.float32)
    idx = np.arange(size)
    if kind == "hstripes":
        arr[(idx // 4) % 2 == 0, :, :] = [230, 40, 40]
    elif kind == "vstripes":
        arr[:, (idx // 4) % 2 == 0, :] = [40, 40, 230]
    elif kind == "dark":
        arr[:] = [30, 200, 30]
    elif kind == "checks":
        arr[((idx[:, None] // 4) + (idx[None, :] // 4)) % 2 == 0] = [250, 250, 50]
    else:
        raise ValueError(kind)
    arr += rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def image_bytes(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_dataset(
    root: Path,
    classes: tuple[str, ...] = ("hstripes", "vstripes"),
    per_class: int = 20,
    size: int = 32,
    names: tuple[str, ...] | None = None,
) -> Path:
    """Write ``per_class`` generated images of each kind into ``root/<name>/``."""
    for i, kind in enumerate(classes):
        folder = root / (names[i] if names else kind)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            fmt = "JPEG" if n % 2 else "PNG"
            ext = "jpg" if fmt == "JPEG" else "png"
            pattern_image(kind, size, seed=n).save(folder / f"{kind}_{n:03d}.{ext}", format=fmt)
    return root


def zip_directory(root: Path, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + str(path.relative_to(root)))
    return buf.getvalue()


def write_toy_version(
    registry,
    name: str,
    classes: list[str],
    size: int = 32,
    seed: int = 0,
    source: str = "test",
    metadata: dict | None = None,
    also_save=None,
) -> int:
    """Write a tiny random CNN (raw pixels in, probabilities out) as a new registry version.

    Loads and answers in milliseconds, and its outputs depend on the input, unlike a
    randomly initialised deep network whose frozen BatchNorm flattens everything."""
    import keras

    from app.storage.registry import MODEL_FILE

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        len(classes), activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 3)
    )(x)
    model = keras.Model(inputs, outputs, name="toy")
    meta = {
        "source": source,
        "base": "toy",
        "architecture": "toy",
        "class_names": classes,
        "image_size": size,
        "metrics": {"accuracy": 0.5},
        **(metadata or {}),
    }

    def save(folder: Path) -> None:
        model.save(folder / MODEL_FILE)
        if also_save is not None:
            also_save(folder)  # more files of the version (its validation images, say)

    return registry.write_version(name, save, meta)


def toy_registry(root: Path, second_seed: int = 1):
    """A registry under ``root/models`` with "toy" versions 1 (active) and 2, for tests
    that promote and roll back between them."""
    from app.storage.registry import ModelRegistry

    registry = ModelRegistry(root / "models")
    write_toy_version(registry, "toy", ["circle", "square"], seed=0)
    write_toy_version(registry, "toy", ["circle", "square"], seed=second_seed)
    registry.set_active("toy", 1)
    return registry


def toy_settings(root: Path, **overrides):
    """Settings for an in-process service on ``root``'s registry ("toy" the default model),
    with no polling and no job processes."""
    from app.config import Settings

    values = dict(
        models_dir=root / "models",
        data_dir=root / "var",
        served_models=[],
        default_model="toy",
        pretrained="none",
        run_jobs=False,
        registry_poll_seconds=0,
    )
    return Settings(**{**values, **overrides})


def run_cli(tmp_path, *args, env_extra=None, timeout=600):
    env = {
        **os.environ,
        "CONVSERVE_MODELS_DIR": str(tmp_path / "models"),
        "CONVSERVE_DATA_DIR": str(tmp_path / "var"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def hot_swap_under_load(app, send, clients: int = 32, total: int = 320, after: int = 60):
    """Send requests from ``clients`` concurrent clients (``send(client)`` makes one) while
    version 2 of ``toy`` is activated once ``after`` answers are in; go on until ``total``
    are in and ``after`` more started after the swap ended. Returns ``[(start time,
    response)]`` and the time the swap ended."""
    import asyncio
    import time

    import httpx
    from asgi_lifespan import LifespanManager

    results: list = []
    swapped_at: list[float] = []

    def finished() -> bool:
        if len(results) < total or not swapped_at:
            return False
        return sum(1 for started, _ in results if started > swapped_at[0]) >= after

    async def worker(client) -> None:
        while not finished():
            started = time.perf_counter()
            results.append((started, await send(client)))

    async def swap(client) -> None:
        while len(results) < after:
            await asyncio.sleep(0.002)
        r = await client.post("/models/toy/versions/2/activate")
        assert r.status_code == 200, r.text
        swapped_at.append(time.perf_counter())

    async def scenario() -> None:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await asyncio.gather(swap(client), *[worker(client) for _ in range(clients)])

    asyncio.run(scenario())
    return results, swapped_at[0]


def mount_tmpfs(path: Path, size: int) -> None:
    """A tmpfs of ``size`` bytes at ``path`` (a small real disk that fills up); skips,
    saying why, where it cannot be mounted (not root). Unmount with ``umount -l``."""
    import subprocess

    import pytest

    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"needs to mount a small tmpfs (root): {done.stderr.strip()}")
