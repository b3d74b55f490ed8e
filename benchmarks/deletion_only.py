"""The bench's `deletion` figure alone, on a private engine with `--images` generated unused images.

    nice -n 10 .venv/bin/python -m benchmarks.deletion_only [--images 1000] [--rounds 4] [--out FILE]
        [--variants 8/0.05,8/0.5,4/0.5] [--spy] [--gc] [--phases] [--slow]

The same function `make bench` runs (`measure.deletion`: the running exporter's `prune_unused` against
`docker image prune -a -f` on the same freshly loaded set, rounds alternating which goes first, scraped every
15 ms during the exporter's runs next to the same pacing at rest), without the read side's 10k/30k engine:
the deletion engine holds only the images it deletes in every profile. `--variants 8/0.05,8/0.5,4/0.5` gives
the rounds those deletions in flight and event batch intervals while deleting, in turn (side by side in
`by_variant`; an odd number of variants meets both orders); `--spy` records py-spy samples of
each run (collapsed stacks in `--dir`); `--gc` every collection's pause during the runs (`gc.callbacks`);
`--phases` per variant, the count and wall time of the engine calls (inspects by lane, DELETEs, listings,
the plan's `/system/df` where the API lists no SharedSize), the intent waits, the audit writes (each write's
lines and its fsync) and whole candidates (`Deleter.delete`) during the runs;
`--slow` the event loop's steps over 12 ms during the runs (what scrapes waited behind).
The hooks go into the exporter through a `sitecustomize` on its PYTHONPATH.
Output: the result as JSON on stdout (and in `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import measure
from benchmarks.imageset import CACHE_ROOT, ImageSet
from benchmarks.run import PROFILES
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess

#: Installed into the exporter (PYTHONPATH): each collection's pause, written at exit (`--gc`); the deletions
#: in flight and the event batch interval while deleting, read from a file before each run (`--variants`).
HOOK = textwrap.dedent(
    """
    import atexit, gc, json, os, time
    _out = os.environ.get("DIE_GC_LOG")
    if _out:
        _pauses = []
        _start = [0.0]
        def _cb(phase, info):
            if phase == "start":
                _start[0] = time.perf_counter()
            else:
                _pauses.append((info["generation"], round((time.perf_counter() - _start[0]) * 1000, 3),
                                info.get("collected", 0), round(time.time(), 3)))
        gc.callbacks.append(_cb)
        def _dump():
            with open(_out + "." + str(os.getpid()), "w") as fh:
                json.dump(_pauses, fh)
        atexit.register(_dump)
    _phases_out = os.environ.get("DIE_PHASES_LOG")
    if _phases_out:
        import functools
        from exporter.engine import client as _client
        from exporter.remediation import audit as _audit, runaudit as _runaudit
        _spans = []
        def _timed(name, fn, lane_of=None):
            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    label = name + ("." + str(kwargs.get("lane", "api")) if lane_of else "")
                    _spans.append((label, round(time.time(), 4), round(time.perf_counter() - start, 6)))
            return wrapper
        _client.Engine.inspect_image = _timed("inspect", _client.Engine.inspect_image, True)
        _client.Engine.remove_image = _timed("delete", _client.Engine.remove_image)
        _client.Engine.list_images = _timed("list_images", _client.Engine.list_images)
        _client.Engine.disk_usage = _timed("disk_usage", _client.Engine.disk_usage)
        from exporter.state import diskusage as _diskusage
        _diskusage.DiskUsageRefresher.refresh_now = _timed("disk_usage_refresh", _diskusage.DiskUsageRefresher.refresh_now)
        from exporter.remediation import runner as _runner
        _runner.Runner._with_shared_sizes = _timed("plan_shared_sizes", _runner.Runner._with_shared_sizes)
        _runaudit.RunAudit.intent = _timed("intent", _runaudit.RunAudit.intent)
        from exporter.remediation import deletion as _deletion_module
        _deletion_module.Deleter.delete = _timed("candidate", _deletion_module.Deleter.delete)
        _write_many = _audit.AuditLog.write_many
        def _written(self, records):
            start = time.perf_counter()
            try:
                return _write_many(self, records)
            finally:
                _spans.append(("fsync_batch", round(time.time(), 4), round(time.perf_counter() - start, 6)))
                _spans.append(("fsync_lines", round(time.time(), 4), len(records)))
        _audit.AuditLog.write_many = _written
        def _dump_phases():
            with open(_phases_out + "." + str(os.getpid()), "w") as fh:
                json.dump(_spans, fh)
        atexit.register(_dump_phases)
    _slow_out = os.environ.get("DIE_SLOW_LOG")
    if _slow_out:
        import asyncio.events as _loop_events
        _slow = []
        _handle_run = _loop_events.Handle._run
        def _what(handle):
            task = getattr(handle._callback, "__self__", None)
            coro = task.get_coro() if hasattr(task, "get_coro") else None
            if coro is None:
                return getattr(handle._callback, "__qualname__", repr(handle._callback))[:120]
            frame, where = coro, []
            while frame is not None:  # the await chain where the step stopped
                f = getattr(frame, "cr_frame", None) or getattr(frame, "gi_frame", None)
                if f is None:
                    break
                where.append(f"{f.f_code.co_qualname}:{f.f_lineno}")
                frame = getattr(frame, "cr_await", None) or getattr(frame, "gi_yieldfrom", None)
            return coro.__qualname__ + " > " + " > ".join(where[1:4])
        def _timed_run(self):
            start, cpu = time.perf_counter(), time.thread_time()
            _handle_run(self)
            took = time.perf_counter() - start
            if took > 0.012:
                used = round((time.thread_time() - cpu) * 1000, 2)
                _slow.append((_what(self), round(time.time(), 3), round(took * 1000, 2), used))
        _loop_events.Handle._run = _timed_run
        def _dump_slow():
            with open(_slow_out + "." + str(os.getpid()), "w") as fh:
                json.dump(_slow, fh)
        atexit.register(_dump_slow)
    _variant = os.environ.get("DIE_VARIANT_FILE")
    if _variant:
        from exporter.remediation import executor as _executor
        from exporter.state import events as _events
        _delete_all = _executor.Executor._delete_all
        async def _as_variant(self, *args, **kwargs):
            with open(_variant) as fh:
                width, interval = fh.read().split("/")
            self.in_flight = int(width)
            _events.DELETING_BATCH_INTERVAL = float(interval)
            return await _delete_all(self, *args, **kwargs)
        _executor.Executor._delete_all = _as_variant
    """
)


#: (start, end) wall-clock time of each of the exporter's runs, for `gc_summary`.
WINDOWS: list[tuple[float, float]] = []


def gc_summary(path: Path) -> dict[str, Any]:
    """Collections per generation during the runs: count, total and worst pause (ms)."""
    out: dict[str, Any] = {}
    for file in path.parent.glob(path.name + ".*"):
        for gen, ms, _collected, at in json.loads(file.read_text()):
            if not any(start <= at <= end for start, end in WINDOWS):
                continue
            g = out.setdefault(f"gen{gen}", {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
            g["count"] += 1
            g["total_ms"] = round(g["total_ms"] + ms, 3)
            g["max_ms"] = max(g["max_ms"], ms)
    return out


class Watch:
    """Called right before each of the exporter's runs (the stop it returns, right after): sets the run's
    deletions in flight and event batch interval (`--variants`, in turn), starts py-spy (`--spy`), notes
    the run's span."""

    def __init__(self, directory: Path, variants: list[str], spy: bool) -> None:
        self.directory = directory
        self.variants = variants
        self.spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) if spy else None
        self.runs = 0
        self.variant_of_run: list[str | None] = []

    def __call__(self, exp: ExporterProcess) -> Callable[[], None]:
        variant = self.variants[self.runs % len(self.variants)] if self.variants else None
        self.variant_of_run.append(variant)
        self.runs += 1
        if variant is not None:
            (self.directory / "variant").write_text(variant)
        proc = None
        if self.spy is not None:
            out = self.directory / f"run-{self.runs}-{(variant or '').replace('/', '-')}.txt"
            command = [self.spy, "record", "-p", str(exp.pid), "-r", "200", "--nonblocking", "-f", "raw", "-o"]
            proc = subprocess.Popen([*command, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)  # attached before the run starts
        start = time.time()

        def stop() -> None:
            WINDOWS.append((start, time.time()))
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)

        return stop


def phase_summary(path: Path, variants: list[str | None]) -> dict[str, Any]:
    """Per variant, engine calls, audit writes and whole candidates (`candidate`: `Deleter.delete`) during the
    runs: count, mean and total seconds (`fsync_lines`: lines per write)."""
    out: dict[str, Any] = {}
    for file in path.parent.glob(path.name + ".*"):
        for name, at, value in json.loads(file.read_text()):
            run = next((n for n, (start, end) in enumerate(WINDOWS) if start <= at <= end), None)
            if run is None:
                continue
            variant = variants[run] if run < len(variants) else None
            p = out.setdefault(str(variant), {}).setdefault(name, {"count": 0, "total": 0.0})
            p["count"] += 1
            p["total"] += value
    for phases in out.values():
        for p in phases.values():
            p["mean"] = round(p["total"] / p["count"], 5)
            p["total"] = round(p["total"], 4)
    return out


def slow_summary(path: Path) -> list[Any]:
    """The event loop's steps over 12 ms (wall) during the runs, longest first: (what, wall ms, the loop thread's
    CPU ms) (what: the task's coroutine and where it stopped next, or the callback). A step with little CPU of
    its own waited for the interpreter lock or for a core."""
    found = []
    for file in path.parent.glob(path.name + ".*"):
        found += [
            (what, ms, cpu)
            for what, at, ms, cpu in json.loads(file.read_text())
            if any(a <= at <= b for a, b in WINDOWS)
        ]
    return sorted(found, key=lambda x: -x[1])[:40]


def by_variant(deletion: dict[str, Any], variants: list[str | None]) -> dict[str, Any]:
    """Per variant: the exporter's rates, prune's in the same rounds, scrape p99s during and at rest."""
    out: dict[str, Any] = {}
    for variant, rnd in zip(variants, deletion["rounds"], strict=False):
        w = out.setdefault(str(variant), {"exporter_per_s": [], "prune_per_s": [], "p99_during": [], "p99_rest": []})
        for key in ("exporter_cpu_ms_per_image", "engine_cpu_ms_per_image", "prune_engine_cpu_ms_per_image"):
            w.setdefault(key, []).append(rnd.get(key))
        w["exporter_per_s"].append(rnd["exporter_per_s"])
        w["prune_per_s"].append(rnd["prune_per_s"])
        w["p99_during"].append(rnd["scrape_p99_ms"]["during"])
        w["p99_rest"].append(rnd["scrape_p99_ms"]["at_rest"])
    for w in out.values():
        w["ratio_to_prune"] = round(sum(w["exporter_per_s"]) / sum(w["prune_per_s"]), 3)
        w["p99_ratio"] = round(sum(w["p99_during"]) / sum(w["p99_rest"]), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/die-deletion-only"))
    parser.add_argument("--spy", action="store_true", help="py-spy each run (run-<n>-w<variant>.txt)")
    parser.add_argument("--gc", action="store_true", help="collector pauses during the runs")
    parser.add_argument("--phases", action="store_true", help="engine calls and audit writes during the runs")
    parser.add_argument("--slow", action="store_true", help="the event loop's steps over 12 ms during the runs")
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated <in flight>/<deleting batch interval>, one per round in turn",
    )
    args = parser.parse_args(argv)
    opts = replace(PROFILES["1k"], delete_count=args.images, delete_rounds=args.rounds)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.dir.mkdir(parents=True, exist_ok=True)
    hook = args.dir / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    if args.gc:
        os.environ["DIE_GC_LOG"] = str(args.dir / "gc.json")
    if args.slow:
        os.environ["DIE_SLOW_LOG"] = str(args.dir / "slow.json")
    if args.phases:
        os.environ["DIE_PHASES_LOG"] = str(args.dir / "phases.json")
    if variants:
        os.environ["DIE_VARIANT_FILE"] = str(args.dir / "variant")
    watch = Watch(args.dir, variants, args.spy)
    workdir = short_workdir("die-del-")
    result: dict[str, Any] = {"images": args.images, "rounds": args.rounds}
    try:
        engine = PrivateDockerd(workdir / "d", name="bookworm")
        try:
            doomed = ImageSet(args.images, prefix="bench/del", probe=False, cache_root=CACHE_ROOT)
            engine.start(timeout=120)
            result["deletion"] = measure.deletion(engine, workdir / "xd", lambda: doomed.load(engine), opts, watch)
        finally:
            engine.stop()
    finally:
        remove_workdir(workdir)
    if variants:
        result["by_variant"] = by_variant(result["deletion"], watch.variant_of_run)
    if args.gc:
        result["gc"] = gc_summary(args.dir / "gc.json")
    if args.phases:
        result["phases"] = phase_summary(args.dir / "phases.json", watch.variant_of_run)
    if args.slow:
        result["slow_steps"] = slow_summary(args.dir / "slow.json")
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
