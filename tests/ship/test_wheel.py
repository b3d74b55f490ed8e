"""The package as a user gets it: sdist and wheel built from the tree, installed into a fresh venv with every
runtime dependency at its declared lower bound, then run from there (never from the source tree).

`python -m build` builds the sdist and then the wheel *from the sdist*, so a file missing from the sdist
fails here too. The pins are generated from pyproject.toml for the interpreter running the tests (CI runs
this file on 3.11 and 3.13, whose bounds differ). Installing the bounds needs the package index.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import exporter
from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
DIST_NAME = "prometheus-docker-image-exporter"
#: What the sdist is built from: the files a checkout has, without caches or a generated _build.py.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "exporter")
REVISION = "wheeltest0123"
SOURCE_DATE_EPOCH = 1_790_000_000


#: Extras installed with the wheel, at their lower bounds too (`cri`: the CRI backend's gRPC and stubs).
EXTRAS = ("cri",)


def lower_bound_pins(pyproject: Mapping[str, Any]) -> dict[str, str]:
    """{name: lower bound} of every runtime dependency (and of `EXTRAS`) whose marker holds for this interpreter."""
    pins: dict[str, str] = {}
    extras = [text for extra in EXTRAS for text in pyproject["project"]["optional-dependencies"][extra]]
    for text in [*pyproject["project"]["dependencies"], *extras]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        lows = [spec.version for spec in req.specifier if spec.operator == ">="]
        assert len(lows) == 1, f"dependency {text!r} must declare exactly one >= lower bound"
        assert req.name not in pins, f"two dependencies named {req.name} apply to this interpreter"
        pins[req.name] = lows[0]
    return pins


def run(cmd: list[str | Path], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would import the package from the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@dataclass
class Built:
    sdist: Path
    wheel: Path


@dataclass
class Installed:
    venv: Path
    pins: dict[str, str]

    @property
    def program(self) -> Path:
        return self.venv / "bin" / "docker-image-exporter"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "_build.py"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    env = clean_env(DIE_REVISION=REVISION, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
    run([sys.executable, "-m", "build", "--outdir", dist, src], cwd=src, env=env)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return Built(sdist, wheel)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    pins = lower_bound_pins(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    work = tmp_path_factory.mktemp("venv")
    constraints = work / "lower-bounds.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=work)
    run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--constraint",
            constraints,
            f"{built.wheel}[{','.join(EXTRAS)}]",
        ],
        cwd=work,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        timeout=900,
    )
    return Installed(venv, pins)


def test_sdist_and_wheel_carry_the_license_and_the_metadata(built: Built) -> None:
    version = exporter.__version__
    assert built.sdist.name == f"prometheus_docker_image_exporter-{version}.tar.gz"
    assert built.wheel.name == f"prometheus_docker_image_exporter-{version}-py3-none-any.whl"
    with tarfile.open(built.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "setup.py", "pyproject.toml", "README.md", "exporter/cli.py"} <= names
    with zipfile.ZipFile(built.wheel) as wheel:
        files = set(wheel.namelist())
        dist_info = f"prometheus_docker_image_exporter-{version}.dist-info"
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        license_text = wheel.read(f"{dist_info}/licenses/LICENSE").decode()
        build_info = wheel.read("exporter/_build.py").decode()
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert f"Name: {DIST_NAME}\n" in metadata
    assert f"Version: {version}\n" in metadata
    assert "License-Expression: Apache-2.0\n" in metadata
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "docker-image-exporter = exporter.__main__:main" in entry_points  # the launch read first (earlyread)
    assert not {f for f in files if f.startswith("tests/")}, "tests must not ship in the wheel"
    assert "exporter/py.typed" in files
    assert f"REVISION = {REVISION!r}" in build_info
    assert "BUILD_DATE = '2026-09-21T" in build_info  # from SOURCE_DATE_EPOCH, not the clock
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    assert not [r for r in requires if "extra ==" not in r and r.split()[0].lower() in ("pytest", "mypy", "ruff")]


def test_installs_with_every_dependency_at_its_lower_bound(installed: Installed) -> None:
    script = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    versions = json.loads(run([installed.python, "-c", script, *installed.pins], cwd=installed.venv))
    assert {n: Version(v) for n, v in versions.items()} == {n: Version(v) for n, v in installed.pins.items()}


def test_the_cri_backend_imports_at_its_lower_bounds(installed: Installed, tmp_path: Path) -> None:
    """The stubs' generated code checks the grpcio and protobuf versions at import: the bounds must pass it."""
    script = "from exporter.engine.cri.client import CriEngine; print(CriEngine.follows_events)"
    assert run([installed.python, "-c", script], cwd=tmp_path, env=clean_env()).strip() == "False"


def test_version_and_config_check_from_the_installed_package(installed: Installed, tmp_path: Path) -> None:
    where = run([installed.python, "-c", "import exporter; print(exporter.__file__)"], cwd=tmp_path, env=clean_env())
    assert Path(where.strip()).is_relative_to(installed.venv), "imported the source tree, not the wheel"
    version = run([installed.program, "--version"], cwd=tmp_path, env=clean_env()).splitlines()
    assert version[0] == f"docker-image-exporter, version {exporter.__version__} (revision: {REVISION})"
    built_at = datetime.datetime.fromtimestamp(SOURCE_DATE_EPOCH, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert version[1].split() == ["build", "date:", built_at]
    for config in ("examples/config.yaml",):
        out = run([installed.program, "--config.check", "--config.file", ROOT / config], cwd=tmp_path, env=clean_env())
        assert "is valid" in out


class InstalledExporter(ExporterProcess):
    """The exporter started from the venv's console script, with nothing from the source tree on the path."""

    def __init__(self, *args: Any, program: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.program = program

    def command(self) -> list[str]:
        return [str(self.program), *super().command()[3:]]  # drop `python -m exporter`

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.pop("PYTHONPATH", None)
        return env


def test_installed_exporter_serves_metrics_from_a_private_engine(
    installed: Installed, dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    exp = InstalledExporter(
        tmp_path, dockerd.host, {"state": {"path": str(tmp_path / "state.json")}}, program=installed.program
    )
    try:
        exp.start()
        exp.wait_ready()
        assert exp.sample("docker_up") == 1
        assert exp.samples("docker_engine_info"), exp.metrics_text()[:2000]
    finally:
        exp.stop()
