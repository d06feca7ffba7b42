"""The ``convserve`` command answers every misuse with one clear sentence (a subprocess,
against the real service on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.client.test_command import CONVSERVE, convserve
from tests.helpers import image_bytes, pattern_image, toy_registry
from tests.jobs.service import Service, free_port


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("misuse")
    toy_registry(root)
    svc = Service(root, CONVSERVE_API_KEY="test-key", CONVSERVE_RUN_JOBS="false").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(12):
        (folder / f"p{i}.png").write_bytes(image_bytes(pattern_image("checks", 32, seed=i)))
    return folder


def test_version_and_global_options_before_or_after_the_command(service):
    from app import __version__

    r = subprocess.run([str(CONVSERVE), "--version"], capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, f"convserve {__version__}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSERVE_")}
    env["CONVSERVE_API_KEY"] = "test-key"  # reads need it
    for args in (
        ["--url", service.url, "--json", "models"],
        ["models", "--url", service.url, "--json"],
        ["--url", "http://127.0.0.1:1", "models", "--url", service.url, "--json"],  # last wins
    ):
        r = subprocess.run([str(CONVSERVE), *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert [m["name"] for m in json.loads(r.stdout)] == ["toy"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["predict", ".", "--per-request", "0"], "--per-request: 0 is not 1 or more"),
        (["predict", ".", "--concurrency", "0"], "--concurrency: 0 is not 1 or more"),
        (["predict", ".", "--top-k", "x"], "--top-k: 'x' is not a whole number"),
        (["predict", ".", "--json", "--csv", "out.csv"], "--json and --csv"),
        (["finetune", "."], "the following arguments are required: --model"),
        (["jobs", "--limit", "-1"], "--limit: -1 is not 1 or more"),
    ],
)
def test_argument_errors_are_argparse_errors(service, args, says):
    r = convserve(service, *args)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("usage: convserve")


def test_an_unknown_model_or_a_service_that_is_down_is_said_once(service, photos):
    r = convserve(service, "predict", photos, "--model", "nope", "--per-request", 1)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: no served model named 'nope'; served: toy (model_not_found, HTTP 404)"
    ]
    env = {**os.environ, "CONVSERVE_URL": f"http://127.0.0.1:{free_port()}"}
    down = subprocess.run(
        [str(CONVSERVE), "predict", str(photos), "--per-request", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert down.returncode == 1
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the service at"), lines


def test_predict_defaults_to_the_apis_top_5_and_prints_tsv_to_a_pipe(service, photos):
    r = convserve(service, "predict", photos / "p0.png", "--model", "toy", "--json")
    assert len(json.loads(r.stdout)["top"]) == 2  # toy has two classes: all of them
    table = convserve(service, "predict", photos, "--model", "toy")
    header, *rows = table.stdout.splitlines()
    assert header.split("\t") == ["file", "model", "top class", "score", "runners-up"]
    assert len(rows) == 12 and all(len(row.split("\t")) == 5 for row in rows)


def test_json_everywhere_it_is_offered(service):
    r = convserve(service, "activate", "toy", 2, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["active_version"] == 2
    r = convserve(service, "activate", "toy", 1, "--json")
    assert json.loads(r.stdout)["active_version"] == 1
    r = convserve(service, "architectures", "--json")
    assert any(a["name"] == "mobilenet_v2" for a in json.loads(r.stdout))


def test_a_model_with_many_classes_prints_the_first_few(service, tmp_path):
    from app.storage.registry import ModelRegistry
    from tests.helpers import write_toy_version

    registry = ModelRegistry(service.env["CONVSERVE_MODELS_DIR"])
    classes = [f"class_{i:03d}" for i in range(300)]
    write_toy_version(registry, "many", classes)
    registry.set_active("many", 1)
    r = convserve(service, "models", "many")
    for _ in range(60):  # the service picks up the new model on its next registry poll
        if r.returncode == 0 and ": ready" in r.stdout:
            break
        time.sleep(0.5)
        r = convserve(service, "models", "many")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert "300 classes: class_000, class_001" in first and "class_299" not in first
    assert len(first) < 300


def test_shell_completion_offers_the_commands(service, tmp_path):
    answer = tmp_path / "completions"
    env = {
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": "convserve dat",
        "COMP_POINT": str(len("convserve dat")),
    }
    r = subprocess.run(
        [str(CONVSERVE)], capture_output=True, text=True, env=env, pass_fds=(), timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert answer.read_text().split() == ["datasets"]
