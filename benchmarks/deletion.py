"""Issue 14: how fast the executor deletes, how long a plan takes, and whether memory stays flat.

    nice -n 19 .venv/bin/python -m benchmarks.deletion delete [--images 1000] [--rounds 3]
    .venv/bin/python -m benchmarks.deletion plan [--images 10000]
    .venv/bin/python -m benchmarks.deletion memory [--images 10000] [--runs 100]

`delete` starts a private dockerd and, per round, loads identical fresh sets of `--images` unused images
(tests/harness/images.py; `--dangling`: without tags, which the executor deletes through a hold reference) and removes each set one way: `docker image prune -a -f` (the reference), the
executor with each `--in-flight` width (default: 1, what main did, and DELETE_LANE_THREADS), and with
`--sdk` also the executor whose delete lane goes through the docker SDK (`sdk_<n>`: the client before
the lean unix-socket one). The order rotates per round (interleaved), medians are reported with the
ratio to prune -a, dockerd's CPU and the exporter's own. The executor's time includes its plan (on the
snapshot of a poll already made, as a running exporter with a live event stream plans), its re-checks
(an inspect per image) and the audit log, as in a real run.
`plan` times make_plan for free_space and keep_last on a synthetic snapshot; `memory` runs repeated dry
runs of a synthetic plan through the executor, keeping summaries as the service's history does, and
reports RSS before and after. Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.config import ProtectConfig, parse_config
from exporter.core.snapshot import Filesystem, Image, ImageRef, Snapshot
from exporter.engine.apishapes import normalize_id
from exporter.engine.client import DELETE_LANE_THREADS, Engine, Lane
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.audit import AuditLog
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import make_plan
from exporter.remediation.runner import HISTORY_SIZE
from exporter.remediation.runs import Run
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.images import Layer, load_images, tiny_images
from tests.unit.actions import action_of

DAY = 86400.0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU a process has used (/proc/<pid>/stat): dockerd's share of a deletion."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- delete ---------------------------------------------------------------------------------------------
class SdkEngine(Engine):
    """The engine facade with its delete lane on the docker SDK, as before the lean client (a reference)."""

    def _lean(self, lane: Lane) -> bool:
        return False


async def executor_delete(
    engine: PrivateDockerd, workdir: Path, in_flight: int, tag: str, sdk: bool = False
) -> dict[str, Any]:
    config = parse_config(
        {
            "filesystem": {"path": str(engine.data_root)},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": "bench"},
                "audit_log": str(workdir / f"audit-{tag}.jsonl"),
                "protect": {"local_only": False},
                "actions": {"unused": {"type": "prune_unused", "min_age": "0s", "max_deletions": 100000}},
            },
        }
    )
    real = (SdkEngine if sdk else Engine)(engine.host, delete_lane_threads=in_flight)
    history = ImageHistory(None)
    history.observe((normalize_id(i["Id"]) for i in engine.get_json("/images/json?all=1")), 0.0)
    poller = Poller(real, config, history, PollMetrics(CollectorRegistry()))
    audit = AuditLog(config.remediation.audit_log)
    executor = Executor(
        real,
        audit,
        RemediationMetrics(CollectorRegistry(), ["unused"]),
        lambda path: Filesystem(path, 1, 1),
        in_flight,
    )
    action = config.remediation.actions["unused"]
    try:
        # a running exporter has polled already (LastTagTimes read) and, its event stream live, plans on
        # that snapshot without re-listing (service._plan_snapshot)
        snapshot = await poller.poll_once()
        assert snapshot is not None, poller.store.last_error
        engine_cpu, own_cpu = cpu_seconds(engine.pid), time.process_time()
        start = time.perf_counter()
        polled = time.perf_counter()
        plan = await asyncio.to_thread(make_plan, snapshot, action, config.remediation.protect, time.time())
        planned = time.perf_counter()
        run = Run("unused", action.type, "manual", False)
        await executor.execute(run, plan, action)
        seconds = time.perf_counter() - start
        engine_cpu, own_cpu = cpu_seconds(engine.pid) - engine_cpu, time.process_time() - own_cpu
    finally:
        real.close()
        audit.close()
    assert run.result == "success", (run.result, run.detail)
    return {
        "seconds": seconds,
        "poll_and_plan_seconds": planned - start,
        "plan_seconds": planned - polled,
        "deleted": run.images_deleted,
        "fsyncs": executor.audit_writer.flushes,
        "engine_cpu_seconds": engine_cpu,
        "exporter_cpu_seconds": own_cpu,
    }


def bench_delete(
    count: int, rounds: int, in_flight: list[int], sdk: list[int], dangling: bool = False
) -> dict[str, Any]:
    workdir = short_workdir("die-del-")
    engine = PrivateDockerd(workdir, name="bench-delete")
    ways = ["prune_a", *(f"in_flight_{n}" for n in in_flight), *(f"sdk_{n}" for n in sdk)]
    times: dict[str, list[float]] = {w: [] for w in ways}
    engine_cpu: dict[str, list[float]] = {w: [] for w in ways}
    exporter_cpu: dict[str, list[float]] = {w: [] for w in ways if w != "prune_a"}
    extra: dict[str, Any] = {}
    try:
        engine.start(timeout=60)
        base = Layer.random(64 * 1024, "bench-delete-base")
        for r in range(rounds):
            for way in ways[r % len(ways) :] + ways[: r % len(ways)]:
                specs = tiny_images(count, prefix=f"r{r}{way.replace('_', '')}/img", shared=base)
                if dangling:  # the executor's other path: a hold reference added, then DELETEd by name
                    specs = [replace(s, tags=[]) for s in specs]
                load_images(engine, specs)
                assert len(engine.get_json("/images/json")) == count
                if way == "prune_a":
                    cpu, start = cpu_seconds(engine.pid), time.perf_counter()
                    engine.cli("image", "prune", "-a", "-f")
                    times[way].append(time.perf_counter() - start)
                    engine_cpu[way].append(cpu_seconds(engine.pid) - cpu)
                else:
                    width, sdk_lane = int(way.rsplit("_", 1)[1]), way.startswith("sdk_")
                    got = asyncio.run(executor_delete(engine, workdir, width, f"{r}-{way}", sdk_lane))
                    times[way].append(got["seconds"])
                    engine_cpu[way].append(got["engine_cpu_seconds"])
                    exporter_cpu[way].append(got["exporter_cpu_seconds"])
                    extra[way] = {
                        "deleted": got["deleted"],
                        "fsyncs": got["fsyncs"],
                        "poll_and_plan_seconds": round(got["poll_and_plan_seconds"], 3),
                        "plan_seconds": round(got["plan_seconds"], 3),
                    }
                assert engine.get_json("/images/json") == [], f"{way} left images behind"
                print(f"round {r} {way}: {times[way][-1]:.2f}s", file=sys.stderr)
    finally:
        engine.stop()
        remove_workdir(workdir)
    return {
        "images": count,
        "dangling": dangling,
        "rounds": rounds,
        "seconds": {w: [round(t, 2) for t in ts] for w, ts in times.items()},
        "median_seconds": {w: round(statistics.median(ts), 2) for w, ts in times.items()},
        "ratio_to_prune_a": {
            w: round(statistics.median(times["prune_a"]) / statistics.median(ts), 2) for w, ts in times.items()
        },
        "median_engine_cpu_seconds": {w: round(statistics.median(c), 2) for w, c in engine_cpu.items()},
        "median_exporter_cpu_seconds": {w: round(statistics.median(c), 2) for w, c in exporter_cpu.items()},
        "last_run": extra,
    }


# -- plan and memory (synthetic: no engine needed) --------------------------------------------------------
def synthetic_snapshot(count: int, now: float) -> Snapshot:
    """`count` unused images in 100 repositories, ages spread over 100 days, 1 MiB each, nothing shared."""
    images = tuple(
        Image(
            id=f"sha256:{i:064x}",
            refs=(ImageRef.parse(f"repo{i % 100}/app:v{i}"),),  # type: ignore[arg-type]
            digests=(),
            created=now - (i % 100) * DAY - i,
            size=1 << 20,
            shared_size=0,
            labels=MappingProxyType({}),
            arrived=now - 200 * DAY,
        )
        for i in range(count)
    )
    fs = Filesystem("/", count * (1 << 20) * 2, 0)
    return Snapshot(now, None, images, filesystem=fs, by_id=MappingProxyType({i.id: i for i in images}))


def bench_plan(count: int) -> dict[str, Any]:
    now = time.time()
    snapshot = synthetic_snapshot(count, now)
    protect = ProtectConfig(references=("repo1/*",), local_only=False)
    out: dict[str, Any] = {"images": count}
    actions: dict[str, Callable[[], Any]] = {
        "free_space": lambda: action_of("free_space", target_avail_ratio=0.9, min_age=DAY, max_deletions=100000),
        "keep_last": lambda: action_of("keep_last", keep=3, min_age=DAY, max_deletions=100000),
        "prune_unused": lambda: action_of("prune_unused", min_age=DAY, max_deletions=100000),
    }
    for name, make in actions.items():
        action = make()
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            plan = make_plan(snapshot, action, protect, now)
            samples.append(time.perf_counter() - start)
        out[name] = {"median_seconds": round(statistics.median(samples), 3), "candidates": len(plan.candidates)}
    return out


async def _dry_runs(count: int, runs: int) -> dict[str, Any]:
    now = time.time()
    snapshot = synthetic_snapshot(count, now)
    action = action_of("prune_unused", min_age=DAY, max_deletions=100000)
    protect = ProtectConfig(references=("repo1/*",), local_only=False)
    history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        audit_path = Path(tmp) / "audit.jsonl"
        audit = AuditLog(str(audit_path))
        executor = Executor(
            Engine("unix:///nonexistent.sock"),
            audit,
            RemediationMetrics(CollectorRegistry(), ["a"]),
            lambda p: snapshot.filesystem,  # type: ignore[arg-type,return-value]
        )
        samples: list[int] = []
        for n in range(runs):
            plan = await asyncio.to_thread(make_plan, snapshot, action, protect, now)
            run = Run("a", action.type, "manual", True)
            await executor.execute(run, plan, action)
            answer = json.dumps(run.to_json())  # the API answer is built, then dropped
            history.appendleft(run.summary())
            del run, plan
            if n in (2, runs // 2 - 1, runs - 1):
                gc.collect()
                samples.append(rss_bytes())
        audit.close()
        lines = sum(1 for _ in audit_path.open())
    return {
        "images": count,
        "runs": runs,
        "rss_after_3_runs_bytes": samples[0],
        "rss_after_half_the_runs_bytes": samples[1],
        "rss_after_all_runs_bytes": samples[-1],
        "growth_ratio": round(samples[-1] / samples[0], 3),
        "audit_lines": lines,
        "api_answer_bytes": len(answer),
        "history_entry_bytes": len(json.dumps(history[0])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["delete", "plan", "memory"])
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument(
        "--in-flight",
        default=f"1,{DELETE_LANE_THREADS}",
        help="comma-separated deletions in flight to compare (default: one, and the executor's default)",
    )
    parser.add_argument("--sdk", default="", help="comma-separated widths to run with the SDK delete lane too")
    parser.add_argument("--dangling", action="store_true", help="load the images without tags")
    args = parser.parse_args()
    if args.what == "delete":
        widths = [int(n) for n in args.in_flight.split(",")]
        sdk_widths = [int(n) for n in args.sdk.split(",") if n]
        result = bench_delete(args.images or 1000, args.rounds, widths, sdk_widths, args.dangling)
    elif args.what == "plan":
        result = bench_plan(args.images or 10000)
    else:
        result = asyncio.run(_dry_runs(args.images or 10000, args.runs))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
