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


def module_path(tree: Path, dotted: str) -> Path:
    return tree.joinpath(*dotted.split(".")).with_suffix(".py")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("exporter.metrics.collector", "import exporter.engine.client", "A scrape and a plan never reach the engine"),
        ("exporter.remediation.planner", "import aiohttp", "Only the web layer and the app factory speak HTTP"),
        ("exporter.state.poller", "import exporter.remediation.service", "The house, top to bottom"),
        ("exporter.state.history", "import docker", "Only the Docker backend"),
        ("exporter.state.poller", "import exporter.engine.client", "Above engine/, an engine is the seam"),
        ("exporter.remediation.restore", "import exporter.engine.cri.client", "Above engine/, an engine is the seam"),
        ("exporter.core.units", "import exporter.core.matchers", "No import circle"),
    ],
)
def test_a_broken_line_fails(tree_copy: Path, module: str, line: str, contract: str) -> None:
    if module == "exporter.core.units":  # close a circle: matchers already needs nothing, make it import units back
        path = module_path(tree_copy, "exporter.core.matchers")
        path.write_text(path.read_text() + "\nimport exporter.core.units  # noqa: E402\n")
    path = module_path(tree_copy, module)
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    result = run_lint_imports(tree_copy)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("exporter.remediation.gate", "from http import HTTPStatus"),
        ("exporter.remediation.service", "from aiohttp import web"),
        ("exporter.state.history", "from multidict import CIMultiDict"),
        ("exporter.config.model", "import yarl"),
    ],
)
def test_http_below_web_fails(tree_copy: Path, module: str, line: str) -> None:
    """An HTTP status or an aiohttp type below web/ breaks `no-http-below-web`, naming the importer."""
    path = module_path(tree_copy, module)
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    result = run_lint_imports(tree_copy)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith("No HTTP below web/") for ln in broken), result.stdout
    assert f"{module} ->" in result.stdout, result.stdout


def modules_of_exporter() -> set[str]:
    """Every module file under exporter/ by dotted name; a package's `__init__` holds no code (see below)."""
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "exporter").rglob("*.py")
        if path.name != "__init__.py"
    }


def placed_under(module: str, names: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def test_no_module_escapes_the_forbidden_import_lists() -> None:
    """A new module must be placed: under a listed source, or under the one place allowed the import."""
    modules = modules_of_exporter()
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "exporter").rglob("__init__.py")}
    allowed = {
        "docker-only-in-engine": {"exporter.engine.client", "exporter.engine.sdk", "exporter.engine.transfer"},
        "http-only-in-web": {"exporter.web", "exporter.app"},
    }
    for contract_id, exempt in allowed.items():
        sources = set(contracts()[contract_id]["source_modules"])  # type: ignore[call-overload]
        assert sources | exempt <= modules | packages, (contract_id, (sources | exempt) - modules - packages)
        unplaced = {m for m in modules if placed_under(m, sources) == placed_under(m, exempt)}
        assert not unplaced, (contract_id, unplaced)


def test_earlyread_imports_nothing_heavy() -> None:
    """The launch listing goes out before the heavy libraries load: importing its module must not load them."""
    heavy = ("docker", "requests", "aiohttp", "pydantic", "prometheus_client", "yaml")
    code = f"import sys, exporter.engine.earlyread; print(sorted(set({heavy!r}) & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "exporter.engine.client",
            "import exporter.engine.earlyread",
            "The engine client takes nothing from the launch",
        ),
        ("exporter.engine.http1", "import exporter.engine.lean", "Inside engine/"),
        ("exporter.state.store", "import exporter.state.builder", "Inside state/"),
        ("exporter.metrics.exposition", "import exporter.metrics.render", "Inside metrics/: the one render call"),
    ],
)
def test_a_broken_line_inside_a_package_fails(tree_copy: Path, module: str, line: str, contract: str) -> None:
    """The package-inner contracts (the store under its writers, one HTTP parser under its readers, the one
    render call over its pieces) are worth as much as the outer ones: each fails when broken on purpose."""
    path = module_path(tree_copy, module)
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    result = run_lint_imports(tree_copy)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout
