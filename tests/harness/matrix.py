"""The engine compatibility matrix: the engine-backed integration suite once per engine kind.

``python -m tests.harness.matrix`` (``make test-engines``) prepares each engine (see ``engines.py``), starts
it once to learn its API version, then runs ``pytest -m "engine and not engine_agnostic" tests/integration``
with ``DIE_ENGINE=<name>`` so the harness fixtures start that engine instead of bookworm's (tests marked
``engine_agnostic`` test the exporter, not the engine: `make test` runs them once). It prints one summary row
per engine and exits non-zero if any engine could not be prepared or any test failed.

``--jobs N`` (or ``DIE_ENGINE_JOBS``) runs N engines at once, each leg's output kept in its own log and
printed whole when the leg ends: the legs wait on engines and timers far more than they compute.

Choose engines with ``DIE_ENGINES=bookworm,sid-containerd`` or as arguments; pytest arguments go after
``--`` (``python -m tests.harness.matrix sid -- -k events``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.harness.engines import ENGINE_NAMES, EngineUnavailable, check_engine, prepare_engine, start_engine

REPO = Path(__file__).resolve().parents[2]
_PRINT_LOCK = threading.Lock()
#: Legs that are not a Docker engine: the CRI backend's suite (`-m cri`) against Debian's containerd, by
#: `DIE_CRI_ENGINE` (bookworm's 1.6 on PATH, trixie's 1.7 from the engine cache).
CRI_LEGS = {"containerd-cri": "bookworm", "containerd-1.7-cri": "trixie"}


@dataclass
class Row:
    """One engine's outcome; ``status`` is ok, failed, no-tests or unavailable."""

    engine: str
    status: str = "ok"
    api_version: str = "-"
    store: str = "-"
    start_seconds: float = 0.0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0  # expected failures of a documented engine bug (junit lists them as skipped)
    errors: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("failed", "unavailable")


def _selected(args: list[str]) -> list[str]:
    names = args or [n.strip() for n in os.environ.get("DIE_ENGINES", "").split(",") if n.strip()]
    names = names or [*ENGINE_NAMES, *CRI_LEGS]
    known = (*ENGINE_NAMES, *CRI_LEGS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def _probe(row: Row) -> None:
    """Start the engine once on its own: proves it runs here and gives the API version for the table."""
    spec = prepare_engine(row.engine)
    row.store = "containerd" if spec.containerd_store else ("podman" if spec.kind == "podman" else "classic")
    workdir = Path(tempfile.mkdtemp(prefix=f"die-probe-{row.engine[:6]}-", dir="/tmp"))
    try:
        started = time.monotonic()
        engine = start_engine(spec, workdir)
        row.start_seconds = time.monotonic() - started
        try:
            row.api_version = check_engine(spec, engine)
        finally:
            engine.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"matrix: {row.engine}: {spec.description}; API {row.api_version}; started in {row.start_seconds:.1f}s")


def _count(junit: Path, row: Row) -> None:
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        total = int(suite.get("tests", 0))
        row.failed += int(suite.get("failures", 0))
        row.errors += int(suite.get("errors", 0))
        row.skipped += int(suite.get("skipped", 0))
        row.passed += total - int(suite.get("failures", 0)) - int(suite.get("errors", 0)) - int(suite.get("skipped", 0))
    xfailed = sum(1 for skip in root.iter("skipped") if skip.get("type") == "pytest.xfail")
    row.xfailed += xfailed
    row.skipped -= xfailed


def _probe_containerd(row: Row) -> None:
    """The CRI leg's containerd (its version for the table; the tests start it privately, fetched if need be)."""
    from tests.harness.containerd import containerd_bin_dir, containerd_version

    # the leg's suite as an argument: legs run in threads of this one process, and another leg's pytest
    # inherits this process's environment
    version = containerd_version(containerd_bin_dir(CRI_LEGS[row.engine]))
    row.api_version, row.store = "CRI v1", f"containerd {version} native"
    print(f"matrix: {row.engine}: containerd {version}", flush=True)


def run_engine(name: str, pytest_args: list[str], timeout: float, log: Path | None = None) -> Row:
    """Prepare, probe and test one engine; every failure ends up in the row, never as an exception.

    With `log`, pytest's output goes there instead of to this process's stdout.
    """
    row = Row(name)
    started = time.monotonic()
    cri = name in CRI_LEGS
    try:
        if cri:
            _probe_containerd(row)
        else:
            _probe(row)
    except EngineUnavailable as exc:
        row.status, row.note = "unavailable", str(exc).splitlines()[0]
        row.seconds = time.monotonic() - started
        return row
    except Exception as exc:  # the engine did not start: say why in the table, go on with the next one
        row.status, row.note = "unavailable", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row.seconds = time.monotonic() - started
        return row
    with tempfile.TemporaryDirectory(prefix="die-matrix-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cri" if cri else "engine and not engine_agnostic",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-ra",
            "--durations=5",  # where each engine spends its minutes, in the CI log
            *(pytest_args or ["tests/integration"]),
        ]
        env = {**os.environ, "DIE_CRI_ENGINE": CRI_LEGS[name]} if cri else {**os.environ, "DIE_ENGINE": name}
        print(f"matrix: {name}: DIE_ENGINE={name} {' '.join(argv[1:])}", flush=True)
        try:
            with open(log, "ab") if log is not None else contextlib.nullcontext() as out:
                code = subprocess.run(
                    argv, cwd=REPO, env=env, timeout=timeout, check=False, stdout=out, stderr=out
                ).returncode
        except subprocess.TimeoutExpired:
            code, row.note = -1, f"timed out after {timeout:.0f}s"
        if junit.exists():
            _count(junit, row)
    row.seconds = time.monotonic() - started
    if code == 5:  # pytest: nothing collected
        row.status = "failed" if os.environ.get("CI") == "true" else "no-tests"
        row.note = row.note or "no engine tests collected"
    elif code != 0 or row.failed or row.errors:
        row.status = "failed"
        row.note = row.note or f"pytest exit {code}"
    return row


def _run_parallel(names: list[str], pytest_args: list[str], timeout: float, jobs: int) -> list[Row]:
    """Run the legs `jobs` at a time; print each leg's whole log when it ends, rows in the given order."""
    with tempfile.TemporaryDirectory(prefix="die-matrix-logs-") as tmp:

        def leg(name: str) -> Row:
            log = Path(tmp) / f"{name}.log"
            log.touch()
            try:
                return run_engine(name, pytest_args, timeout, log=log)
            finally:
                with _PRINT_LOCK:
                    print(f"\n===== matrix: {name} =====\n{log.read_text(errors='replace')}", flush=True)

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(leg, names))


def format_table(rows: list[Row]) -> str:
    head = (
        "engine",
        "store",
        "API",
        "start s",
        "passed",
        "failed",
        "skipped",
        "xfailed",
        "errors",
        "seconds",
        "status",
    )
    lines = [head] + [
        (
            r.engine,
            r.store,
            r.api_version,
            f"{r.start_seconds:.1f}",
            str(r.passed),
            str(r.failed),
            str(r.skipped),
            str(r.xfailed),
            str(r.errors),
            f"{r.seconds:.0f}",
            r.status + (f": {r.note}" if r.note else ""),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in lines
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, pytest_args = args[:split], args[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m tests.harness.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("engines", nargs="*", help=f"engine names (default: $DIE_ENGINES or {','.join(ENGINE_NAMES)})")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--timeout", type=float, default=float(os.environ.get("DIE_ENGINE_TIMEOUT", 1800)), help="seconds per engine"
    )
    parser.add_argument(
        "--jobs", type=int, default=int(os.environ.get("DIE_ENGINE_JOBS", 1)), help="engines tested at once"
    )
    opts = parser.parse_args(args)
    names = _selected(opts.engines)
    if opts.jobs <= 1:
        rows = [run_engine(name, pytest_args, opts.timeout) for name in names]
    else:
        for name in names:  # downloads and unpacking first, one at a time (they share the cache)
            with contextlib.suppress(EngineUnavailable):
                prepare_engine(name)
        rows = _run_parallel(names, pytest_args, opts.timeout, opts.jobs)
    print("\nengine matrix:\n" + format_table(rows), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if any(r.bad for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
