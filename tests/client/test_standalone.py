"""The client stands alone: ``app.client`` and the ``convserve`` command work where none of
the service's dependencies (TensorFlow, NumPy, Pillow, FastAPI ...) nor its code can be
imported, as after ``pip install convserve`` without the ``server`` extra."""

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from tests.helpers import toy_registry
from tests.jobs.service import ROOT, Service

# What `pip install convserve` does not install, and the service's own packages.
BLOCKED_PACKAGES = (
    "tensorflow",
    "keras",
    "numpy",
    "PIL",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic_settings",
    "sqlalchemy",
    "jinja2",
    "openvino",
    "nncf",
    "dramatiq",
    "boto3",
)
BLOCKED_MODULES = (
    "app.api",
    "app.config",
    "app.console",
    "app.data",
    "app.jobs",
    "app.main",
    "app.protocols",
    "app.serving",
    "app.storage",
    "app.training.trainer",
)

BLOCKER = textwrap.dedent(
    f"""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED_PACKAGES!r} or any(
                name == m or name.startswith(m + ".") for m in {BLOCKED_MODULES!r}
            ):
                raise ImportError(f"{{name}} is not installed here", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def client_alone(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``convserve ARGV`` in a Python that cannot import the service or its dependencies."""
    code = BLOCKER + "from app.client.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("standalone")
    toy_registry(root)
    svc = Service(root).start()
    yield svc
    svc.stop()


def test_the_blocker_really_blocks():
    r = subprocess.run(
        [sys.executable, "-c", BLOCKER + "import numpy"], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert "numpy is not installed here" in r.stderr


def test_the_command_talks_to_the_service_without_the_server_installed(service):
    r = client_alone("models", "--json", "--url", service.url)
    assert r.returncode == 0, r.stderr
    assert '"toy"' in r.stdout

    r = client_alone("--version")
    assert r.returncode == 0 and r.stdout.startswith("convserve ")


def test_training_options_come_from_the_declaration_without_the_server():
    r = client_alone("finetune", "--help")
    assert r.returncode == 0, r.stderr
    for option in ("--fine-tune-at", "--no-augment", "--lr-schedule", "--validation-split"):
        assert option in r.stdout
    r = client_alone("finetune", "photos", "--model", "m", "--epochs", "0")
    assert r.returncode == 2
    assert "argument --epochs: 0 is out of range (from 1 to 500)" in r.stderr


def test_service_commands_say_what_to_install():
    r = client_alone("serve")
    assert r.returncode == 2
    assert "pip install 'convserve[server]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_python_client_imports_alone(service):
    code = BLOCKER + textwrap.dedent(
        f"""
        import asyncio
        from app.client import AsyncClient, Client

        with Client({service.url!r}) as cs:
            print(sorted(m.name for m in cs.models().models))

        async def main():
            async with AsyncClient({service.url!r}) as cs:
                print((await cs.model("toy")).name)

        asyncio.run(main())
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["['toy']", "toy"]


@pytest.mark.slow
def test_pip_install_without_the_server_extra_gives_a_working_client(service, tmp_path):
    """A real install from the package index of what ``pip install convserve`` installs."""
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for heavy in ("tensorflow", "numpy", "fastapi", "openvino", "pillow"):
        assert heavy not in frozen, f"{heavy} was installed with the client"
    convserve = env_dir / "bin" / "convserve"
    r = subprocess.run(
        [str(convserve), "models", "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "toy" in r.stdout
    r = subprocess.run([str(convserve), "serve"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "convserve[server]" in r.stderr


def test_the_client_package_declares_no_server_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("[")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert names == {"pydantic", "httpx", "httpx-sse", "rich", "argcomplete"}
    assert Path(ROOT / "app" / "client").is_dir()
