"""Issue 23: a whole dry-run request at bench scale without an engine: plan, outcomes, audit lines, the record
and the encoded answer, in the order the exporter does them, and the CPU each part takes.

    nice -n 10 .venv/bin/python -m benchmarks.dry_run_request [--images 30000] [--rounds 7] [--profile free]
    nice -n 10 .venv/bin/python -m benchmarks.dry_run_request --against <rev>   # this tree vs <rev>, alternating

The snapshot is shaped like the bench's image set (benchmarks.imageset: 100 tags per repository, one tag per
image, an hour apart, an `index` label, no repo digests, one shared layer) and the actions are measure.py's
(`free`: free_space target 0.99, `keep`: keep_last 5; min_age 0, nothing protected). Per round the parts run
as the runner and the web handler run them (`Runner._run`, `Executor.execute`, `Runner._record`,
`Run.to_json(100)` encoded): each part's thread CPU time is recorded; `total` is their sum. The audit log
is in a temporary directory (put TMPDIR on tmpfs, as the bench does). `--against REV` runs the same rounds in
child processes on REV's `exporter` package (git archive) and this tree's, alternating, and reports both and
their ratio. Output: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

HOUR = 3600.0
ACTIONS = ("free", "keep")


def bench_snapshot(count: int, now: float) -> Any:
    from exporter.core.snapshot import Filesystem, Image, ImageRef, Snapshot

    images = tuple(
        Image(
            id=f"sha256:{i:064x}",
            refs=(ImageRef.parse(f"bulk/img{i // 100}:{i}"),),  # type: ignore[arg-type]
            digests=(),
            created=now - 300 * 86400 - i * HOUR,
            size=(256 << 10) + 1200,
            shared_size=256 << 10,
            labels=MappingProxyType({"index": str(i)}),
            arrived=now - 600,
        )
        for i in range(count)
    )
    fs = Filesystem("/", 100 << 30, 1 << 30)
    return Snapshot(now, None, images, filesystem=fs, by_id=MappingProxyType({i.id: i for i in images}))


def the_actions() -> dict[str, Any]:
    from tests.unit.actions import action_of

    return {
        "free": action_of("free_space", "free", target_avail_ratio=0.99, min_age=0.0, max_deletions=100_000),
        "keep": action_of("keep_last", "keep", keep=5, min_age=0.0, max_deletions=100_000),
    }


async def one_request(snapshot: Any, action: Any, audit_dir: str) -> tuple[dict[str, float], int, bytes]:
    """The parts of one dry-run request, each timed in thread CPU (all run in this thread, as one would
    measure the worker and the loop together)."""
    from prometheus_client import CollectorRegistry

    from exporter.config import ProtectConfig
    from exporter.remediation import runner as runner_module
    from exporter.remediation.audit import AuditLog
    from exporter.remediation.executor import Executor
    from exporter.remediation.metrics import RemediationMetrics
    from exporter.remediation.planner import make_plan
    from exporter.remediation.runs import Run

    parts: dict[str, float] = {}
    protect = ProtectConfig(local_only=False)
    audit = AuditLog(str(Path(audit_dir) / "audit.jsonl"))
    executor = Executor(
        None,  # type: ignore[arg-type]  # a dry run sends nothing to the engine
        audit,
        RemediationMetrics(CollectorRegistry(), [action.name]),
        lambda p: snapshot.filesystem,
    )
    clock = time.process_time  # the worker threads' CPU too (off_loop)
    now = snapshot.taken_at
    run = Run(action.name, action.type, "manual", True)
    t = clock()
    all(i.shared_size is not None for i in snapshot.images)  # Runner._with_shared_sizes
    plan = make_plan(snapshot, action, protect, now)
    parts["plan"] = clock() - t
    t = clock()
    runner_module._summed(plan)
    parts["summed"] = clock() - t
    t = clock()
    await executor.execute(run, plan, action)  # outcomes (_described), audit lines
    parts["execute"] = clock() - t
    t = clock()
    runner_module._digest(run, action)
    parts["record"] = clock() - t
    t = clock()
    body = json.dumps(run.to_json(100)).encode()
    parts["answer"] = clock() - t
    t = clock()
    del run, plan
    parts["free"] = clock() - t
    parts["total"] = sum(parts.values())
    return parts, len(body), body


def rounds(count: int, n: int, profile: str | None) -> dict[str, Any]:
    now = 1_790_000_000.0
    snapshot = bench_snapshot(count, now)
    actions = the_actions()
    gc.collect()
    gc.freeze()  # the snapshot is long-lived in the exporter (frozen out of collections, see core.gcpolicy)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as audit_dir:
        for name, action in actions.items():
            samples: list[dict[str, float]] = []
            size = 0
            for _ in range(n):
                gc.disable()  # held during a dry run (offloop.hold_collector)
                parts, size, _ = asyncio.run(one_request(snapshot, action, audit_dir))
                gc.enable()
                samples.append(parts)
            out[name] = {key: round(statistics.median(s[key] for s in samples) * 1000, 1) for key in samples[0]} | {
                "total_min": round(min(s["total"] for s in samples) * 1000, 1),
                "answer_bytes": size,
            }
            if profile == name:
                from exporter.core import offloop

                async def inline(fn: Any, /, *args: Any) -> Any:
                    return fn(*args)

                offloop.off_loop = inline  # a profile sees one thread only
                prof = cProfile.Profile()
                gc.disable()
                prof.enable()
                asyncio.run(one_request(snapshot, action, audit_dir))
                prof.disable()
                gc.enable()
                stats = pstats.Stats(prof, stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(30)
                stats.sort_stats("cumulative").print_stats(40)
    return out


def answers(count: int) -> dict[str, str]:
    """Each action's answer bytes with the run's own ids and times masked (for comparing two trees)."""
    import hashlib

    now = 1_790_000_000.0
    snapshot = bench_snapshot(count, now)
    out = {}
    with tempfile.TemporaryDirectory() as audit_dir:
        for name, action in the_actions().items():
            data = json.loads(asyncio.run(one_request(snapshot, action, audit_dir))[2])
            for key in ("run_id", "started_at", "finished_at"):
                data[key] = None
            out[name] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return out


def against(revision: str, count: int, n: int, turns: int) -> dict[str, Any]:
    """This tree and `revision` in child processes, alternating turns of `n` rounds each."""
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "archive", revision, "exporter"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        return _alternating(revision, old, count, n, turns)


def _alternating(revision: str, old: str, count: int, n: int, turns: int) -> dict[str, Any]:
    sides = {revision: old, "this tree": ""}
    per: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    digests: dict[str, Any] = {}
    for turn in range(turns):
        for side in list(sides) if turn % 2 else list(sides)[::-1]:
            args = [sys.executable, "-m", "benchmarks.dry_run_request", "--child", str(n), "--images", str(count)]
            if sides[side]:
                args += ["--tree", sides[side]]
            if turn == 0:
                args.append("--digests")
            child = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
            per[side].append(child["rounds"])
            if "digests" in child:
                digests[side] = child["digests"]
    result: dict[str, Any] = {"images": count, "against": revision, "turns": turns, "rounds_per_turn": n}
    result["answers_equal"] = digests[revision] == digests["this tree"]
    for action in ACTIONS:
        entry: dict[str, Any] = {}
        for side in sides:
            keys = per[side][0][action].keys()
            entry[side] = {k: round(statistics.median(t[action][k] for t in per[side]), 1) for k in keys}
        entry["total_ratio"] = round(entry["this tree"]["total"] / entry[revision]["total"], 3)
        result[action] = entry
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--profile", choices=ACTIONS)
    parser.add_argument("--against")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--digests", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tree:  # another checkout's package first: drop the editable install's finder
        sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
        sys.path.insert(0, args.tree)
    if args.child:
        child: dict[str, Any] = {"rounds": rounds(args.images, args.child, None)}
        if args.digests:
            child["digests"] = answers(args.images)
        print(json.dumps(child))
        return 0
    if args.against:
        print(json.dumps(against(args.against, args.images, args.rounds, args.turns), indent=1))
        return 0
    out = {"images": args.images, "load_average": os.getloadavg()[0], **rounds(args.images, args.rounds, args.profile)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
