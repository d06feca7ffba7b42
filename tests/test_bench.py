"""The serving benchmark still runs end to end (tiny models, a few requests; slow)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_serve_bench_runs_and_reports_every_table():
    pytest.importorskip("aiohttp")
    pytest.importorskip("openvino")
    cmd = [
        sys.executable,
        "bench/serve_bench.py",
        "--models",
        "mobilenet_v2",
        "--targets",
        "keras,openvino,naive",
        "--image-size",
        "32",
        "--requests",
        "12",
        "--seconds",
        "5",
        "--raw-seconds",
        "0.3",
    ]
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
    ).stdout
    served = re.findall(r"^\| mobilenet_v2 \| (\w+) \| (\d+) \| (\d+) \| (\d+) \|", out, re.M)
    assert {(target, int(c)) for target, c, _, _ in served} == {
        (t, c) for t in ("keras", "openvino", "naive") for c in (1, 8, 32)
    }
    assert all(int(requests) == 12 and int(errors) == 0 for _, _, requests, errors in served)
    assert re.search(r"^\| mobilenet_v2 \| openvino \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M)
    assert "vs naive peer" in out
    v2 = re.findall(r"^\| mobilenet_v2 \| (\w+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| 0 \|$", out, re.M)
    assert sorted(v2) == ["keras", "openvino"], "V2 /infer row with no errors per backend"
