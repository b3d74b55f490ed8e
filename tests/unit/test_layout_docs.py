"""The layout the docs show is the layout of the tree: README's "Layout" table and docs/architecture.md.

The next maintainer finds a module through these two pages; a module missing from either, or named there
and gone, sends them looking in the wrong place. Names are checked both ways.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPORTER = ROOT / "exporter"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
REPO_DIRS = ("tests/", "scripts/", "benchmarks/", "docs/", "exporter/")


def modules() -> set[str]:
    """Each module file by its path under exporter/ without `.py` (`state/poller`); package inits hold no code."""
    found = set()
    for path in EXPORTER.rglob("*.py"):
        rel = path.relative_to(EXPORTER).with_suffix("").as_posix()
        if path.name != "__init__.py" and rel != "_build":  # _build.py is written by setup.py at build time
            found.add(rel)
    return found


def readme_table(text: str) -> set[str]:
    """Module names in the Layout table: a row's package (`exporter/` for the top) and its backticked modules."""
    lines = text.splitlines()
    start = lines.index("| package | modules | why there |")
    named = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = line.split("|")
        package = re.fullmatch(r"\s*`([\w/]+/)`\s*", cells[1])
        assert package, f"the first cell names a package like `web/`: {line}"
        prefix = "" if package[1] == "exporter/" else package[1]
        named |= {prefix + name for name in re.findall(r"`(\w+)`", cells[2])}
    return named


def architecture_paths(text: str) -> tuple[set[str], set[str]]:
    """(module paths under exporter/, other repository paths) that docs/architecture.md names as `x.py`."""
    inside, outside = set(), set()
    for token in re.findall(r"(?<![\w/.])((?:[\w]+/)*\w+\.py)\b", text):
        if token.startswith(REPO_DIRS[:-1]):
            outside.add(token)
        else:
            inside.add(token.removeprefix("exporter/").removesuffix(".py"))
    return inside, outside


def mismatch(named: set[str]) -> tuple[set[str], set[str]]:
    """(modules not named, names that are no module)."""
    return modules() - named, named - modules()


def test_readme_layout_table_names_every_module_and_only_those() -> None:
    missing, extra = mismatch(readme_table((ROOT / "README.md").read_text()))
    assert not missing, f"missing from README's Layout table: {sorted(missing)}"
    assert not extra, f"named in README's Layout table, not in exporter/: {sorted(extra)}"


def test_architecture_names_every_module_and_only_those() -> None:
    missing, extra = mismatch(architecture_paths(ARCHITECTURE.read_text())[0])
    assert not missing, f"missing from docs/architecture.md: {sorted(missing)}"
    assert not extra, f"named in docs/architecture.md, not in exporter/: {sorted(extra)}"


def test_architecture_names_real_files_and_tests() -> None:
    """`tests/x.py::test_name` references prove an invariant only if the function is there."""
    text = ARCHITECTURE.read_text()
    _, outside = architecture_paths(text)
    assert all((ROOT / path).is_file() for path in outside), sorted(p for p in outside if not (ROOT / p).is_file())
    references = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert references, "docs/architecture.md names the tests that prove each invariant"
    for path, name in references:
        assert re.search(rf"^\s*(async )?def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name}"


def test_a_module_left_out_or_gone_is_found() -> None:
    readme = (ROOT / "README.md").read_text()
    missing, extra = mismatch(readme_table(readme))
    assert mismatch(readme_table(readme.replace("then `poller`, then", "then", 1))) == (
        missing | {"state/poller"},
        extra,
    )
    assert mismatch(readme_table(readme.replace("`cli`", "`cli`, `gone`", 1))) == (missing, extra | {"gone"})
    doc = ARCHITECTURE.read_text()
    missing, extra = mismatch(architecture_paths(doc)[0])
    assert mismatch(architecture_paths(doc.replace("state/poller.py", "state/gone.py"))[0]) == (
        missing | {"state/poller"},
        extra | {"state/gone"},
    )
