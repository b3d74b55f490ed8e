"""Issue 23: a plan's CPU time and the longest stretches it holds the interpreter lock, this tree's planner
next to another revision's, in one process (alternating, so a busy machine slows both alike).

    nice -n 10 .venv/bin/python -m benchmarks.plan_holds [--images 30000] [--rounds 9] [--against HEAD~3]

Over a synthetic snapshot (benchmarks.deletion), for `free_space`, `keep_last` (keep 5) and `prune_unused`:
- `plan_cpu_ms`: the plan's thread CPU time, min and median of `--rounds`, each side (CPU time, not wall
  time: other processes on the machine do not count);
- `longest_c_call_cpu_ms`: the longest single call into a builtin while planning (a profile hook times each):
  such a call keeps the interpreter lock throughout, whatever the switch interval, so a scrape on the event
  loop waits at least that long if it arrives meanwhile; calls that run Python code inside (`sum` over a
  generator) count here but do give the lock up;
- `free_on_loop_cpu_ms`: freeing the plan and its dry-run outcomes where their last reference goes, in one
  call (as on the event loop when a run's answer lets go of them), next to what is left on the loop when
  `offloop.free_later` holds them (the worker frees them a slice at a time).
Both plans must be equal (their JSON and every candidate). Output: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from benchmarks.deletion import DAY, synthetic_snapshot
from exporter.config import ProtectConfig
from exporter.core import offloop
from exporter.remediation import planner as this_tree
from exporter.remediation.executor import _described
from tests.unit.actions import action_of


def planner_at(revision: str) -> ModuleType:
    """exporter/remediation/planner.py as it is at `revision`, imported beside this tree's."""
    source = subprocess.run(
        ["git", "show", f"{revision}:exporter/remediation/planner.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "planner_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("planner_then", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["planner_then"] = module
    spec.loader.exec_module(module)
    return module


def longest_c_call(fn: Any) -> tuple[float, str]:
    stack: list[float] = []
    longest = (0.0, "")

    def hook(_frame: FrameType, event: str, arg: Any) -> None:
        nonlocal longest
        if event == "c_call":
            stack.append(time.thread_time())
        elif event in ("c_return", "c_exception") and stack:
            took = time.thread_time() - stack.pop()
            if took > longest[0]:
                longest = (took, getattr(arg, "__qualname__", str(arg)))

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return round(longest[0] * 1000, 1), longest[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--against", default="HEAD", help="the git revision whose planner.py to compare with")
    args = parser.parse_args()
    then = planner_at(args.against)
    now = time.time()
    snapshot = synthetic_snapshot(args.images, now)
    protect = ProtectConfig(references=("repo1/*",), local_only=False)
    actions = {
        "free_space": action_of("free_space", target_avail_ratio=0.9, min_age=DAY, max_deletions=100000),
        "keep_last": action_of("keep_last", keep=5, min_age=DAY, max_deletions=100000),
        "prune_unused": action_of("prune_unused", min_age=DAY, max_deletions=100000),
    }
    sides = {args.against: then, "this tree": this_tree}
    out: dict[str, Any] = {
        "images": args.images,
        "against": args.against,
        "python": sys.version.split()[0],
        "load_average": os.getloadavg()[0],
    }
    gc.disable()  # as offloop holds the collector while a plan runs
    for name, action in actions.items():
        cpu: dict[str, list[float]] = {side: [] for side in sides}
        plans: dict[str, Any] = {}
        for n in range(args.rounds):
            for side in list(sides) if n % 2 else list(sides)[::-1]:
                start = time.thread_time()
                plans[side] = sides[side].make_plan(snapshot, action, protect, now)
                cpu[side].append(time.thread_time() - start)
        a, b = plans.values()
        assert a.to_json() == b.to_json(), name
        assert [dataclasses.asdict(c) for c in a.candidates] == [dataclasses.asdict(c) for c in b.candidates], name
        del a, b
        plans.clear()
        entry: dict[str, Any] = {"candidates": None, "plan_cpu_ms": {}, "longest_c_call_cpu_ms": {}}
        for side, module in sides.items():
            samples = cpu[side]
            entry["plan_cpu_ms"][side] = {
                "min": round(min(samples) * 1000, 1),
                "median": round(statistics.median(samples) * 1000, 1),
            }
            entry["longest_c_call_cpu_ms"][side] = longest_c_call(
                lambda module=module, action=action: module.make_plan(snapshot, action, protect, now)
            )
        entry["plan_cpu_ratio_min"] = round(
            entry["plan_cpu_ms"]["this tree"]["min"] / entry["plan_cpu_ms"][args.against]["min"], 3
        )
        plan = this_tree.make_plan(snapshot, action, protect, now)
        entry["candidates"] = len(plan.candidates)
        outcomes = _described(plan, action)[0]
        kept: list[Any] = [plan, outcomes]
        del plan, outcomes
        start = time.thread_time()
        kept.clear()
        at_once = time.thread_time() - start
        plan = this_tree.make_plan(snapshot, action, protect, now)
        outcomes = _described(plan, action)[0]
        offloop.free_later(plan, outcomes)
        kept = [plan, outcomes]
        del plan, outcomes
        start = time.thread_time()
        kept.clear()
        handed_over = time.thread_time() - start
        while offloop.held_for_freeing():
            time.sleep(0.05)
        entry["free_on_loop_cpu_ms"] = {
            "at_once": round(at_once * 1000, 1),
            "with_free_later": round(handed_over * 1000, 2),
        }
        out[name] = entry
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
