#!/usr/bin/env python3
"""Move exporter/'s flat modules into packages by data flow, and rewrite every reference to them.

    python scripts/restructure.py          # from the repository root: move, rewrite, sort imports, format
    python scripts/restructure.py --check  # exit 1 if a run would change anything

The layout (docs/architecture.md): ``engine/`` talks to the engine and parses its answers, ``state/`` keeps
what the engine said (poller, event follower, disk usage, the state file), ``metrics/`` turns a snapshot into
metric families. ``snapshot``, ``schedule``, ``schedulestate`` and ``matchers`` stay at the top: they are the
value types and parsers that config, engine, state and remediation all read, and a package of either side
would make the packages import each other in a circle.

What a run does, in order, and why it can run again on a tree that has moved already (it then changes
nothing):

1. Rewrites every reference in the repository's text files (``*.py``, ``*.md``, ``*.toml``, ``*.sh``,
   ``*.cfg``, ``*.yml``/``*.yaml``, ``Makefile``, ``Dockerfile``; never ``.git``, ``.venv*``, ``build/``
   nor the recorded benchmark results): dotted names (``exporter.poller`` -> ``exporter.state.poller``, in
   imports, ``mock.patch`` strings, import-linter contracts, prose), ``from exporter import poller, units``
   (split by package) and paths (``exporter/poller.py``). Logger names stay as they are: the ``caller=``
   field of every log line is an interface, so a moved module that names its logger ``__name__`` gets its
   old name as a literal, and ``getLogger("...")``, ``LogRecord("...")``, ``logger="..."``, ``.name == "..."``
   and ``caller=`` are never rewritten. ``exporter.engine`` is the one ambiguous name (the old module, the new package):
   it is rewritten only while ``exporter/engine.py`` exists, and never when followed by a submodule name.
2. Replaces the package-level layers in pyproject.toml's import-linter ``layers`` contract and adds one
   contract per package for the order inside it. A module the old layers name and this script does not
   know (added on another branch) joins the new layer of the top-level modules it shared its old layer
   with; if it shared none, the script stops before writing anything.
3. ``git mv``s each module still at its old place and creates each package's ``__init__.py`` (a docstring,
   no imports: ``exporter.engine.earlyread`` is imported before the heavy libraries and must stay light).
4. Applies the few fixups a rename cannot express (``FIXUPS``).
5. Sorts imports (``ruff check --select I --fix``) and formats (``ruff format``) the Python files it changed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path.cwd()
THIS = Path(__file__).resolve()

# old dotted name -> new dotted name
MOVES: dict[str, str] = {
    "exporter.engine": "exporter.engine.client",
    "exporter.apishapes": "exporter.engine.apishapes",
    "exporter.hints": "exporter.engine.hints",
    "exporter.earlyread": "exporter.engine.earlyread",
    "exporter.firstreads": "exporter.engine.firstreads",
    "exporter.poller": "exporter.state.poller",
    "exporter.events": "exporter.state.events",
    "exporter.diskusage": "exporter.state.diskusage",
    "exporter.history": "exporter.state.history",
    "exporter.collector": "exporter.metrics.collector",
    "exporter.selfmetrics": "exporter.metrics.selfmetrics",
}

PACKAGES: dict[str, str] = {
    "exporter.engine": "Talking to the engine: the client (the only user of the docker SDK), launch reads, answer shapes, error hints.",
    "exporter.state": "What the engine said, kept: the poller, the event follower, disk usage, the state file.",
    "exporter.metrics": "Snapshots into metrics: the collector, the exporter's own metrics, the rendered text of a snapshot.",
}

# The package-level order of the house; `|` joins layers that must not import each other.
NEW_LAYERS = [
    "exporter.__main__",
    "exporter.cli",
    "exporter.app",
    "exporter.reload",
    "exporter.web",
    "exporter.remediation",
    "exporter.state",
    "exporter.engine | exporter.metrics",
    "exporter.config",
    "exporter.schedule",
    "exporter.snapshot | exporter.units | exporter.matchers | exporter.logs | exporter.schedulestate | exporter.memory",
]

INNER_CONTRACTS = """
[[tool.importlinter.contracts]]
id = "layers-engine"
name = "Inside engine/: launch reads over the client over shapes, hints and the early read"
type = "layers"
containers = ["exporter.engine"]
layers = ["firstreads", "client", "apishapes | hints | earlyread"]

[[tool.importlinter.contracts]]
id = "layers-state"
name = "Inside state/: the event follower and disk usage over the poller over the state file"
type = "layers"
containers = ["exporter.state"]
layers = ["events | diskusage", "poller", "history"]

[[tool.importlinter.contracts]]
id = "layers-metrics"
name = "Inside metrics/: the collector and the self metrics stay apart"
type = "independence"
modules = ["exporter.metrics.collector", "exporter.metrics.selfmetrics"]

[[tool.importlinter.contracts]]
id = "layers-remediation"
name = "Inside remediation/: service over executor over records, the planner pure below them"
type = "layers"
containers = ["exporter.remediation"]
layers = ["service", "executor | relay", "metrics | runs | alerts | audit", "planner", "records"]
"""

# Spots a rename cannot express: (path, pattern, replacement), each a no-op once applied.
FIXUPS: list[tuple[str, re.Pattern[str], str]] = [
    # the modules importing earlyread loads now include its package
    (
        "tests/unit/test_engineaddress.py",
        re.compile(r'(?<!"exporter\.engine",\n)^(?P<indent>[ ]+)"exporter\.engine\.earlyread",\n', re.M),
        '\\g<indent>"exporter.engine",\n\\g<indent>"exporter.engine.earlyread",\n',
    ),
]

SUFFIXES = {".py", ".md", ".toml", ".sh", ".cfg", ".yml", ".yaml"}
NAMES = {"Makefile", "Dockerfile"}
SKIP_PREFIXES = (".git/", ".venv", "build/", "benchmarks/results/")

# contexts where a dotted name is a logger name, not a module
LOGGER_CONTEXT = r'(?<!getLogger\(")(?<!LogRecord\(")(?<!logger=")(?<!\.name == ")(?<!caller=)'


def module_file(dotted: str) -> Path:
    return ROOT.joinpath(*dotted.split(".")).with_suffix(".py")


def pending_moves() -> dict[str, str]:
    pending = {}
    for old, new in MOVES.items():
        if module_file(old).exists():
            if module_file(new).exists():
                sys.exit(f"restructure: both {module_file(old)} and {module_file(new)} exist; resolve by hand")
            pending[old] = new
    return pending


def dotted_rules(pending: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    rules = []
    for old, new in sorted(MOVES.items(), key=lambda kv: -len(kv[0])):
        tail = ""
        if old == "exporter.engine":
            if old not in pending:
                continue  # the name is the package now
            subs = "|".join(sorted(n.rsplit(".", 1)[1] for n in MOVES.values() if n.startswith("exporter.engine.")))
            tail = rf"(?!\.(?:{subs})\b)"
        rules.append((re.compile(LOGGER_CONTEXT + r"(?<![\w.])" + re.escape(old) + r"\b" + tail), new))
        old_path, new_path = old.replace(".", "/") + ".py", new.replace(".", "/") + ".py"
        rules.append((re.compile(r"(?<![\w.-])" + re.escape(old_path) + r"\b"), new_path))
    return rules


FROM_EXPORTER = re.compile(
    r"^(?P<indent>[ \t]*)from exporter import (?P<names>\([^)]*\)|[^\n#(]+?)(?P<comment>[ \t]*#[^\n]*)?$", re.M
)


def split_from_exporter(match: re.Match[str], pending: dict[str, str]) -> str:
    """`from exporter import a, b as c` with moved names: one import per package, names kept."""
    names = [n.strip() for n in match["names"].strip("()").replace("\n", " ").split(",") if n.strip()]
    if any("#" in n for n in names):
        return match[0]
    by_package: dict[str, list[str]] = {}
    for item in names:
        name, _, alias = (p.strip() for p in item.partition(" as "))
        new = MOVES.get(f"exporter.{name}")
        if new is None or (name == "engine" and "exporter.engine" not in pending):
            by_package.setdefault("exporter", []).append(item)
            continue
        package, leaf = new.rsplit(".", 1)
        alias = alias or (name if leaf != name else "")
        by_package.setdefault(package, []).append(f"{leaf} as {alias}" if alias else leaf)
    if list(by_package) == ["exporter"]:
        return match[0]
    lines = [f"{match['indent']}from {package} import {', '.join(items)}" for package, items in by_package.items()]
    lines[0] += match["comment"] or ""
    return "\n".join(lines)


def pin_logger(text: str, old: str) -> str:
    return text.replace(
        "log = logging.getLogger(__name__)",
        f'log = logging.getLogger("{old}")  # the caller= name log pipelines filter on, not the file\'s place',
    )


def replace_layers(text: str) -> str:
    start = text.index('id = "layers"')
    begin = text.index("layers = [", start)
    end = text.index("]\n", begin) + 2
    old_layers = [[n.strip() for n in layer.split("|")] for layer in re.findall(r'"([^"]+)"', text[begin:end])]
    new_layers = [[n.strip() for n in layer.split("|")] for layer in NEW_LAYERS]
    for old_layer in old_layers:
        for name in old_layer:
            if any(name == p or name.startswith(p + ".") for layer in new_layers for p in layer):
                continue
            # a module this script does not know (added on another branch): it joins the new layer of the
            # top-level modules it shared its old layer with
            homes = [layer for layer in new_layers if any(n in layer for n in old_layer if n.count(".") == 1)]
            if not homes:
                sys.exit(f"restructure: the layers contract names {name}, which NEW_LAYERS does not place; add it")
            homes[0].append(name)
    body = "layers = [\n" + "".join(f'    "{" | ".join(layer)}",\n' for layer in new_layers) + "]\n"
    text = text[:begin] + body + text[end:]
    if 'id = "layers-engine"' not in text:
        after = text.index("[[tool.importlinter.contracts]]", text.index(body))
        text = text[:after] + INNER_CONTRACTS.lstrip("\n") + "\n" + text[after:]
    return text


def text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    files = []
    for rel in listed:
        path = ROOT / rel
        if rel.startswith(SKIP_PREFIXES) or path.resolve() == THIS or not path.is_file():
            continue
        if path.suffix in SUFFIXES or path.name in NAMES:
            files.append(path)
    return files


def rewrite(path: Path, text: str, pending: dict[str, str], rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, new in rules:
        text = pattern.sub(new, text)
    if path.suffix == ".py":  # after the dotted rules, which would read `from exporter.engine import x` as the module
        text = FROM_EXPORTER.sub(lambda match: split_from_exporter(match, pending), text)
        for old in pending:
            if path == module_file(old):
                text = pin_logger(text, old)
    if path == ROOT / "pyproject.toml":
        text = replace_layers(text)
    for rel, pattern, replacement in FIXUPS:
        if path == ROOT / rel:
            text = pattern.sub(replacement, text)
    return text


def ruff() -> list[str] | None:
    found = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return [found] if Path(found).exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a run would")
    args = parser.parse_args()
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "exporter" / "__init__.py").is_file():
        sys.exit("restructure: run from the repository root")
    pending = pending_moves()
    rules = dotted_rules(pending)
    changed: dict[Path, str] = {}
    for path in text_files():
        text = path.read_text(encoding="utf-8")
        new = rewrite(path, text, pending, rules)
        if new != text:
            changed[path] = new
    missing_inits = [p for p in PACKAGES if not module_file(p + ".__init__").exists()]
    if args.check:
        for path in sorted(changed):
            print(f"would rewrite {path.relative_to(ROOT)}")
        for old, new in pending.items():
            print(f"would move {old} -> {new}")
        return 1 if changed or pending or missing_inits else 0
    for path, text in changed.items():
        path.write_text(text, encoding="utf-8")
    for package in missing_inits:
        init = module_file(package + ".__init__")
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text(f'"""{PACKAGES[package]}"""\n', encoding="utf-8")
        subprocess.run(["git", "add", str(init.relative_to(ROOT))], cwd=ROOT, check=True)
    moved = []
    for old, new in pending.items():
        source, target = module_file(old), module_file(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "mv", str(source.relative_to(ROOT)), str(target.relative_to(ROOT))], cwd=ROOT, check=True
        )
        moved.append(target)
        changed.pop(source, None)
    python = sorted({str(p.relative_to(ROOT)) for p in [*changed, *moved] if p.suffix == ".py" and p.exists()})
    command = ruff()
    if python and command:
        subprocess.run([*command, "check", "--select", "I", "--fix", "--quiet", *python], cwd=ROOT, check=False)
        subprocess.run([*command, "format", "--quiet", *python], cwd=ROOT, check=True)
    elif python:
        print("restructure: ruff not found; run `ruff check --select I --fix . && ruff format .`", file=sys.stderr)
    print(f"restructure: moved {len(pending)} modules, rewrote {len(changed)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
