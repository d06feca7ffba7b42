"""The long fuzzing run: schemathesis' own CLI against the running service, every operation,
many more examples than the suite's bounded run (tests/api/test_fuzz.py).

Starts the service as in production (``python -m app serve``, ResNet-50 and MobileNetV2 with
random weights at 64x64 so a request is cheap, an API key), then runs

    schemathesis run http://.../openapi.json --checks ... --max-examples N --seed S

with all its phases (examples, coverage, fuzzing, stateful), valid and invalid data, half
the model names and versions taken from the ones that exist, and prints its summary. Exit
status is schemathesis' own: 0 when nothing was found.

    python bench/fuzz.py [--max-examples 300] [--seed 20261126] [--workers 1] [--checks all]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import cpu_name, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "fuzz-key"
# Half the names and versions generated for paths and queries are ones that exist, so the
# fuzzed bodies and queries also reach the code behind the lookups.
DICTIONARIES = """
[dictionaries.models]
values = ["mobilenet_v2", "resnet50"]

[dictionaries.versions]
values = [1]

[dictionaries.labels]
values = ["1", "active", "latest"]

[parameters]
"path.name" = { dictionary = "models", probability = 0.5 }
"query.model" = { dictionary = "models", probability = 0.5 }
"path.version" = { dictionary = "versions", probability = 0.5 }

[[operations]]
include-path-regex = "/labels/"
parameters = { "path.version" = { dictionary = "labels", probability = 0.5 } }
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261126)
    # One worker: with two, hypothesis' own lambda-description cache raced once (a runtime
    # error inside schemathesis, not an answer of the service).
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--checks",
        default="all",
        help="schemathesis' checks (default all, as the suite; the project's schemathesis.toml"
        " says what each operation may refuse)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convserve-fuzz-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CONVSERVE_MODELS_DIR": str(work / "models"),
        "CONVSERVE_DATA_DIR": str(work / "var"),
        "CONVSERVE_PRETRAINED": "none",
        "CONVSERVE_BOOTSTRAP_IMAGE_SIZE": "64",
        "CONVSERVE_API_KEY": API_KEY,
        "CONVSERVE_RUN_JOBS": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = open(work / "service.log", "wb")  # noqa: SIM115 - open for the service's lifetime
    service = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(url, service)
        started = time.perf_counter()
        # The project's configuration (schemathesis.toml: what each operation may refuse),
        # then the names that exist.
        project = (ROOT / "schemathesis.toml").read_text()
        (work / "schemathesis.toml").write_text(project + "\n" + DICTIONARIES)
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(work / "schemathesis.toml"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                args.checks,
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--workers",
                str(args.workers),
                "--header",
                f"Authorization: Bearer {API_KEY}",
                "--request-timeout",
                "60",
                "--report",
                "junit",
                "--report-dir",
                str(ROOT / "build" / "bench" / "fuzz"),
            ],
            cwd=work,
        )
        seconds = time.perf_counter() - started
    finally:
        service.terminate()
        service.wait(timeout=60)
        log.close()
    errors = (work / "service.log").read_text(errors="replace").count("Traceback")
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_name()}; {seconds / 60:.1f} min; "
        f"schemathesis exit {run.returncode}; tracebacks in the service log: {errors}"
    )
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
