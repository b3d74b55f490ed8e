"""The design lines in pyproject.toml's `[tool.importlinter]`: kept by the tree, and able to fail.

`make lint` runs `lint-imports`; these tests make sure that is worth something: the contracts hold today, a
deliberately broken line (the collector importing the engine, a planner importing aiohttp, a circle) makes
`lint-imports` fail naming the contract, and no module of exporter/ escapes the forbidden-import lists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def run_lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "exporter", tmp_path / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    result = run_lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("collector.py", "import exporter.engine", "A scrape and a plan never reach the engine"),
        ("remediation/planner.py", "import aiohttp", "Only the web layer and the app factory speak HTTP"),
        ("poller.py", "import exporter.remediation.service", "The house, top to bottom"),
        ("history.py", "import docker", "Only exporter.engine imports the docker SDK"),
        ("units.py", "import exporter.matchers", "No import circle"),
    ],
)
def test_a_broken_line_fails(tree_copy: Path, module: str, line: str, contract: str) -> None:
    if module == "units.py":  # close a circle: matchers already needs nothing, make it import units back
        path = tree_copy / "exporter" / "matchers.py"
        path.write_text(path.read_text() + "\nimport exporter.units  # noqa: E402\n")
    path = tree_copy / "exporter" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    result = run_lint_imports(tree_copy)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout


def test_no_module_escapes_the_forbidden_import_lists() -> None:
    """A new top-level module must be placed: listed as a source, or be the one module allowed the import."""
    top_level = {
        f"exporter.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "exporter").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    allowed = {"docker-only-in-engine": {"exporter.engine"}, "http-only-in-web": {"exporter.web", "exporter.app"}}
    for contract_id, exempt in allowed.items():
        sources = set(contracts()[contract_id]["source_modules"])  # type: ignore[call-overload]
        assert top_level - exempt == sources, contract_id
