"""`make bench`: issue 14's figures for the exporter on a private engine, each next to its reference.

Profiles (`BENCH_PROFILE`, default `1k`): `1k`, `10k`, `30k`, `smoke` (50 images, one round of everything: what
the test suite runs so this code cannot rot). `BENCH_IMAGE_COUNTS=1000,10000` runs the profile's rounds at
other sizes. Results go to benchmarks/results/<date>-<profile>.json plus a Markdown table on stdout.
Numbers only: nothing here passes or fails. Run it under `nice -n 19` on a shared machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import catchup, measure
from benchmarks.imageset import CACHE_ROOT, ImageSet
from benchmarks.measure import Options
from benchmarks.report import markdown
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess

RESULTS = Path(__file__).resolve().parent / "results"

PROFILES: dict[str, Options] = {
    "smoke": Options(
        count=50,
        scrape_rounds=3,
        startup_rounds=1,
        change_rounds=1,
        burst=5,
        plan_rounds=1,
        disk_plan_rounds=1,
        dry_runs=3,
        memory_changes=20,
        idle_seconds=1.0,
        delete_count=20,
        delete_rounds=1,
    ),
    "1k": Options(count=1000, scrape_rounds=50),
    # on-disk plans at 10k take one fsync per candidate (minutes): audit_fsync x candidates predicts them
    "10k": Options(count=10_000, disk_plan_rounds=0, dry_run_budget_seconds=600.0),
    # a large CI host or a mirror; its data root is cached as the 10k one (`python -m benchmarks.imageset 30000`
    # builds it ahead: loading 30,000 images takes the engine 10+ minutes)
    "30k": Options(count=30_000, scrape_rounds=20, startup_rounds=2, disk_plan_rounds=0, dry_run_budget_seconds=600.0),
}


def options_from_env(env: dict[str, str] | None = None) -> tuple[str, list[Options]]:
    """The profile name and one Options per image count (`BENCH_IMAGE_COUNTS` overrides the profile's)."""
    env = dict(os.environ if env is None else env)
    name = env.get("BENCH_PROFILE", "1k")
    if name not in PROFILES:
        raise SystemExit(f"BENCH_PROFILE must be one of {', '.join(PROFILES)}, got {name!r}")
    base = PROFILES[name]
    if "BENCH_DRY_RUNS" in env:
        base = replace(base, dry_runs=int(env["BENCH_DRY_RUNS"]))
    counts = env.get("BENCH_IMAGE_COUNTS")
    if not counts:
        return name, [base]
    return name, [replace(base, count=int(c)) for c in counts.split(",") if c.strip()]


def bench(
    opts: Options, *, use_cache: bool = True, cache_root: Path = CACHE_ROOT, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every figure at `opts.count` images: a main engine for the read side, a second one for deletion."""
    result: dict[str, Any] = {"images": opts.count, "options": opts.__dict__}
    workdir = short_workdir("die-bench-")
    try:
        engine = PrivateDockerd(workdir / "e", name="bookworm")
        try:
            log(f"[{opts.count}] preparing the engine")
            result["setup"] = ImageSet(opts.count, cache_root=cache_root).prepare(
                engine, use_cache=use_cache, timeout=300
            )
            result["engine_api_version"] = engine.api_version()
            result.update(_read_side(engine, workdir / "x", opts, log))
        finally:
            engine.stop()
        deleter = PrivateDockerd(workdir / "d", name="bookworm")
        try:
            log(f"[{opts.count}] deletion: {opts.delete_count} images x {opts.delete_rounds} rounds")
            doomed = ImageSet(opts.delete_count, prefix="bench/del", probe=False, cache_root=cache_root)
            deleter.start(timeout=120)
            result["deletion"] = measure.deletion(deleter, workdir / "xd", lambda: doomed.load(deleter), opts)
        finally:
            deleter.stop()
    finally:
        remove_workdir(workdir)
    return result


def _read_side(engine: PrivateDockerd, workdir: Path, opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    log(f"[{opts.count}] start -> ready, {opts.startup_rounds} rounds")
    result["startup"] = measure.startup(engine, workdir, opts)
    log(f"[{opts.count}] catch-up after ready, {opts.catch_up_rounds} rounds")
    result["catch_up"] = catchup.catch_up(
        engine, workdir, measure.exporter_config(engine, workdir, "catchup"), rounds=opts.catch_up_rounds
    )
    if opts.profile:
        log(f"[{opts.count}] profiling the first poll")
        result.setdefault("profile", {})["first_poll"] = measure.profile_first_poll(engine, workdir)
    capped = ExporterProcess(workdir, engine.host, measure.exporter_config(engine, workdir, "default"), name="default")
    uncapped = ExporterProcess(
        workdir, engine.host, measure.exporter_config(engine, workdir, "uncapped", uncapped=True), name="uncapped"
    )
    try:
        measure.started(capped)
        measure.started(uncapped)
        result["fill"] = {exp.name: _settle_after_start(exp) for exp in (capped, uncapped)}
        log(f"[{opts.count}] scrapes, {opts.scrape_rounds} rounds")
        result["scrape"] = measure.scrapes(engine, capped, uncapped, opts)
        log(f"[{opts.count}] scrapes over HTTPS, {opts.scrape_rounds} rounds")
        result["tls_scrape"] = measure.tls_scrapes(engine, workdir, capped, opts)
        log(f"[{opts.count}] memory and {opts.idle_seconds:.0f} s idle CPU")
        result["process"] = measure.memory_and_idle({"default": capped, "uncapped": uncapped}, opts)
        if opts.profile:
            log(f"[{opts.count}] profiling scrapes")
            result["profile"]["uncapped_scrape"] = measure.profile_scrapes(uncapped, workdir / "scrape.raw")
        capped.stop()  # one exporter's reaction to each event: the uncapped one, whose render is the largest
        log(f"[{opts.count}] change -> metrics (uncapped), {opts.change_rounds} rounds")
        result["change"] = measure.change_to_metrics(engine, uncapped, opts)
        log(f"[{opts.count}] RSS over {opts.memory_changes} changes (uncapped)")
        result["change_memory"] = measure.change_memory(engine, uncapped, opts)
        log(f"[{opts.count}] burst of {opts.burst} untags (uncapped)")
        result["burst"] = measure.untag_burst(engine, uncapped, opts)
        uncapped.stop()
        result["audit_fsync"] = measure.fsync_latency(workdir / "fsync-probe.jsonl")
    finally:
        capped.stop()
        uncapped.stop()
    if opts.disk_plan_rounds:
        log(f"[{opts.count}] dry-run plans, audit log on disk, {opts.disk_plan_rounds} rounds")
        disk = ExporterProcess(workdir, engine.host, measure.exporter_config(engine, workdir, "disk"), name="disk")
        try:
            measure.started(disk)
            _settle_after_start(disk)
            result["plans_audit_on_disk"] = measure.plans(disk, opts.disk_plan_rounds)
        finally:
            disk.stop()
    result.update(_planning(engine, workdir, opts, log))
    return result


def _planning(engine: PrivateDockerd, workdir: Path, opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """Plans and repeated dry runs with the audit log on tmpfs: the planning itself, not the disk's fsync."""
    result: dict[str, Any] = {}
    shm = Path(tempfile.mkdtemp(prefix="die-bench-", dir="/dev/shm"))
    audit = shm / "audit.jsonl"
    planner = ExporterProcess(
        workdir, engine.host, measure.exporter_config(engine, workdir, "planner", audit_log=audit), name="planner"
    )
    try:
        measure.started(planner)
        _settle_after_start(planner)
        log(f"[{opts.count}] dry-run plans, audit log on tmpfs, {opts.plan_rounds} rounds")
        result["plans"] = measure.plans(planner, opts.plan_rounds)
        log(f"[{opts.count}] {opts.dry_runs} dry runs")
        result["dry_run_memory"] = measure.dry_run_memory(planner, audit, opts)
    finally:
        planner.stop()
        shutil.rmtree(shm, ignore_errors=True)
    return result


def _has_disk_usage(exp: ExporterProcess) -> bool:
    return exp.sample("docker_images_disk_usage_bytes") is not None


def _filled(exp: ExporterProcess) -> bool:
    return exp.sample("docker_exporter_pending_inspects") == 0


def _settle_after_start(exp: ExporterProcess) -> dict[str, float]:
    """Wait for what fills in behind `/-/ready` (LastTagTime inspects, the first `/system/df`): figures at rest.

    Why: until then every fill publish re-renders rows all over the exposition, and plans re-list (the
    snapshot says it is behind); that one-off transient after a start is reported here, not mixed into the
    steady-state scrape and plan figures.
    """
    start = time.perf_counter()
    exp.wait_for(partial(_filled, exp), 600, what="LastTagTime inspects")
    filled = time.perf_counter() - start
    exp.wait_for(partial(_has_disk_usage, exp), 600, what="first /system/df")
    return {"last_tag_times_seconds": round(filled, 3), "disk_usage_seconds": round(time.perf_counter() - start, 3)}


def write_results(report: dict[str, Any], profile: str, directory: Path = RESULTS) -> Path:
    """`<date>-<profile>.json` (atomically) and the Markdown table next to it as `.md`."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{datetime.now(UTC):%Y-%m-%d}-{profile}.json"
    for path, text in ((out, json.dumps(report, indent=2) + "\n"), (out.with_suffix(".md"), markdown(report) + "\n")):
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
            handle.write(text)
        os.replace(handle.name, path)
    return out


def run(profile: str, runs: list[Options], *, use_cache: bool = True, cache_root: Path = CACHE_ROOT) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "runs": [bench(opts, use_cache=use_cache, cache_root=cache_root, log=log) for opts in runs],
    }


def main() -> int:
    profile, runs = options_from_env()
    report = run(profile, runs, use_cache=os.environ.get("BENCH_NO_CACHE", "") == "")
    out = write_results(report, profile)
    print(markdown(report))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
