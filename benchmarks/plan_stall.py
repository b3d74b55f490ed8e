"""Issue 23: does a plan (or a dry run's outcomes) in progress stall the scrapes the event loop serves?

    nice -n 10 .venv/bin/python -m benchmarks.plan_stall [--images 30000] [--plans 12] [--pace-ms 15]

One process serves `GET /metrics` from a prepared body (as the exporter serves it from its render cache:
no work per scrape beyond writing it) on an aiohttp app, and on the same event loop runs, one after the
other with pauses between, a `free_space` plan over a synthetic snapshot (benchmarks.deletion) followed by
its dry-run outcomes, as a dry run does. A second process scrapes over one kept-alive connection every
`--pace-ms` and records each scrape's start and latency (CLOCK_MONOTONIC is shared across processes).
Plans alternate between the two ways of taking the work off the loop: a plain `asyncio.to_thread`, and
`core.offloop.off_loop` (the switch interval lowered while the work runs), so both are measured in
the same run next to the scrapes at rest.

A plan ends when its results are let go of on the loop, as a run's answer lets go of them: with
`to_thread` they are freed there and then; with `off_loop` they are handed to `offloop.free_later` first (as
the runner does), which frees them in a worker thread, a slice at a time (`--no-free-later`: freed on the
loop too). A scrape counts as `during` a plan when it starts while that plan runs, `after` when it starts in
the `--gap` after it (the collector held for its first half, as a dry run holds it until its answer is sent), and
`at_rest` when it starts in the `--rest` seconds before the first plan. The collector's pauses over 5 ms
are listed (generation, ms); `--freeze` freezes the snapshot out of their walks first, as a publisher calling
`core.gcpolicy.freeze_long_lived` does. Output: one JSON object (p50/p95/p99/max per class, plan seconds).

Scrapes first (`--ways off_loop,scrapes_first`, `--exposition real`): `/metrics` is the exporter's own
`MetricsEndpoint` over the synthetic snapshot (the snapshot part rendered once in a worker thread and cached,
the exporter's own metrics rendered per scrape, the body written in pieces), and the way `scrapes_first` is
`off_loop` with the scrape handler wrapped in `offloop.scrapes_first` (`MetricsEndpoint.serve`), so that the
work pauses at its checkpoints while a scrape is served; in the other ways the same handler writes its body
without it. The work is the plan, its dry-run outcomes and the answer's JSON (`--answer-limit` entries per
list, as `?limit=`; encoded by `offloop.dumps_in_slices` in the way `scrapes_first`), then the counts of the
dry run's audit line: on the loop in the way `off_loop` (as `runaudit` counted them before), off it in the
way `scrapes_first`. Beside the scraper's latencies, the handler's own time on the loop thread is split
(`handler_*`): its CPU, and its wait for the interpreter lock (wall time less CPU less time preempted by the
OS, from /proc's schedstat): that wait is what work in a thread costs a scrape, whatever the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def scrape_loop(port: int, seconds: float, pace: float) -> list[tuple[float, float]]:
    """(start, latency) of each scrape, one every `pace` seconds (start to start) for `seconds`."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    samples: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < end:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        start = time.monotonic()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        samples.append((start, time.monotonic() - start))
        next_at += pace
        if time.monotonic() > next_at:  # a slow scrape: start the next one now, not a burst to catch up
            next_at = time.monotonic()
    conn.close()
    return samples


def summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"n": 0}
    ordered = sorted(latencies)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"n": len(ordered), "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": q(1.0)}


def schedstat() -> tuple[float, float]:
    """This thread's CPU time and time spent runnable but not running (preempted by the OS), in seconds."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        on_cpu, waiting, _ = f.read().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def handler_summary(handled: list[tuple[float, float, float, float]]) -> dict[str, Any]:
    """The scrape handler's time on the loop thread, and what of it went waiting for the interpreter lock: its
    wall time less its CPU time and its time preempted by the OS (`schedstat`), which the load of other
    processes adds; the handler blocks on nothing else (its socket writes do not block)."""
    return {
        "wall": summary([wall for _, wall, _, _ in handled]),
        "cpu": summary([cpu for _, _, cpu, _ in handled]),
        "lock_wait": summary([max(0.0, wall - cpu - queued) for _, wall, cpu, queued in handled]),
    }


async def serve_and_plan(args: argparse.Namespace) -> dict[str, Any]:
    # imported here: the scraping process runs this module too, and must start scraping at once
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from benchmarks.deletion import DAY, synthetic_snapshot
    from exporter.config import MetricsConfig, ProtectConfig
    from exporter.core import gcpolicy, offloop
    from exporter.metrics.collector import SnapshotCollector
    from exporter.metrics.selfmetrics import PollMetrics, register_runtime_metrics
    from exporter.remediation.executor import _described
    from exporter.remediation.metrics import RemediationMetrics
    from exporter.remediation.planner import make_plan
    from exporter.remediation.runs import tally
    from exporter.web.exposition import MetricsEndpoint
    from tests.unit.actions import action_of

    offloop.SWITCH_INTERVAL = args.switch_interval
    now = time.time()
    snapshot = synthetic_snapshot(args.images, now)
    body = b"# synthetic exposition\n" + b"x" * args.body_bytes
    app = web.Application()
    gate = [False]  # the way of the plan in progress (or last ended) is scrapes_first

    class Source:  # what the snapshot collector reads of the store
        def __init__(self) -> None:
            self.snapshot, self.up = snapshot, True

    registry = CollectorRegistry(auto_describe=True)
    PollMetrics(registry)
    collector = SnapshotCollector(Source(), MetricsConfig())
    registry.register(collector)
    RemediationMetrics(registry, [args.action])
    register_runtime_metrics(registry)
    endpoint = MetricsEndpoint(registry, collector)

    handled: list[tuple[float, float, float, float]] = []  # per scrape: start, wall, CPU, run-queue wait

    async def metrics(request: web.Request) -> web.StreamResponse:
        start, (cpu, queued) = time.monotonic(), schedstat()
        try:
            return await respond(request)
        finally:
            cpu_after, queued_after = schedstat()
            handled.append((start, time.monotonic() - start, cpu_after - cpu, queued_after - queued))

    async def respond(request: web.Request) -> web.Response:
        if args.exposition == "synthetic":
            if gate[0]:
                with offloop.scrapes_first():
                    response = web.Response(body=body, content_type="text/plain")
                    await response.prepare(request)
                    await response.write_eof()
                    return response
            return web.Response(body=body, content_type="text/plain")
        if gate[0]:
            return await endpoint.serve(request)
        response = await endpoint.handle(request)
        await response.prepare(request)
        await response.write_eof()
        return response

    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    if args.freeze:  # as a publisher calling core.gcpolicy.freeze_long_lived after each publish
        gcpolicy.freeze_long_lived()
    protect = ProtectConfig(references=("repo1/*",), local_only=False)
    action = action_of(args.action, target_avail_ratio=0.9, keep=2, min_age=DAY, max_deletions=100000)

    def work() -> tuple[Any, ...]:
        plan = make_plan(snapshot, action, protect, now)
        outcomes, _ = _described(plan, action)
        limit = args.answer_limit
        answer = {"plan": plan.to_json(limit), "outcomes": [o.to_json() for o in outcomes[:limit]]}
        encode = offloop.dumps_in_slices if gate[0] else json.dumps
        return plan, outcomes, encode(answer).encode()

    async def plain(fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    every_way: dict[str, Callable[[Callable[[], Any]], Any]] = {
        "to_thread": plain,
        "off_loop": offloop.off_loop,
        "scrapes_first": offloop.off_loop,
    }
    ways = {name: every_way[name] for name in args.ways.split(",")}
    total = args.rest + args.plans * (args.gap + 3.0)
    scraper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.plan_stall",
        "--scrape",
        str(port),
        str(total),
        str(args.pace_ms / 1000),
        stdout=subprocess.PIPE,
    )
    plans: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    pauses: list[tuple[int, float, float]] = []  # (generation, seconds, start) of each collection over 5 ms
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and time.perf_counter() - started[0] > 0.005:
            pauses.append((info["generation"], time.perf_counter() - started[0], time.monotonic()))

    gc.callbacks.append(timed)
    await asyncio.sleep(args.rest)  # scrapes at rest first (the scraper starts within a fraction of it)
    names = list(ways)
    for n in range(args.plans):
        name = names[n % len(names)]
        gate[0] = name == "scrapes_first"
        start = time.monotonic()
        held = name != "to_thread"
        if held:  # as the runner holds it over a dry run, until its answer is sent
            offloop.hold_collector()
        kept = await ways[name](work)
        if name == "scrapes_first":  # the audit line's counts of a dry run, off the loop or on it
            await offloop.off_loop(tally, kept[1])
        elif name == "off_loop":
            tally(kept[1])
        if held and args.free_later:  # as the runner does when a run ends
            offloop.free_later(*kept)
        del kept  # as a run's answer lets go of its plan and outcomes: part of the plan's time on the loop
        plans[name].append((start, time.monotonic()))
        await asyncio.sleep(args.gap / 2)
        if held:
            offloop.release_collector()
        await asyncio.sleep(args.gap / 2)
    out, _ = await scraper.communicate()
    gc.callbacks.remove(timed)
    await runner.cleanup()
    samples: list[tuple[float, float]] = json.loads(out)
    every = [span for spans in plans.values() for span in spans]
    first = min(a for a, _ in every)
    result: dict[str, Any] = {
        "images": args.images,
        "action": args.action,
        "exposition": args.exposition,
        "answer_limit": args.answer_limit,
        "pace_ms": args.pace_ms,
        "body_bytes": len(body) if args.exposition == "synthetic" else None,
        "python": sys.version.split()[0],
        "switch_interval_s": args.switch_interval,
        "free_later": args.free_later,
        "freeze": args.freeze,
        "load_average": os.getloadavg()[0],
        # the first scrapes render the snapshot part (as after each publish): warm-up, not rest
        "at_rest": summary([lat for s, lat in samples[10:] if s < first]),
    }
    for name, spans in plans.items():
        result[name] = {
            "plan_and_outcomes_seconds_median": round(statistics.median(b - a for a, b in spans), 3),
            "during": summary([lat for s, lat in samples if any(a <= s <= b for a, b in spans)]),
            "after": summary([lat for s, lat in samples if any(b < s <= b + args.gap for a, b in spans)]),
            "handler_during": handler_summary([h for h in handled if any(a <= h[0] <= b for a, b in spans)]),
            "gc_pauses_over_5ms_during": [
                (g, round(t * 1000, 1)) for g, t, at in pauses if any(a <= at <= b for a, b in spans)
            ],
            "gc_pauses_over_5ms_after": [
                (g, round(t * 1000, 1)) for g, t, at in pauses if any(b < at <= b + args.gap for a, b in spans)
            ],
        }
    result["handler_at_rest"] = handler_summary([h for h in handled[10:] if h[0] < first])
    rest_p99 = result["at_rest"].get("p99_ms")
    for name in plans:
        during = result[name]["during"].get("p99_ms")
        if rest_p99 and during is not None:
            result[name]["p99_ratio_to_rest"] = round(during / rest_p99, 2)
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--scrape":
        port, seconds, pace = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(scrape_loop(port, seconds, pace)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--action", choices=("free_space", "keep_last"), default="free_space")
    parser.add_argument(
        "--ways",
        default="off_loop,scrapes_first",
        help="comma-separated, taken in turn by the plans: to_thread, off_loop, scrapes_first",
    )
    parser.add_argument(
        "--exposition",
        choices=("real", "synthetic"),
        default="real",
        help="real: the exporter's MetricsEndpoint over the snapshot; synthetic: a prepared body of --body-bytes",
    )
    parser.add_argument("--answer-limit", type=int, default=100, help="entries per list of the answer (?limit=)")
    parser.add_argument("--plans", type=int, default=12, help="plans in all, alternating between the two ways")
    parser.add_argument("--pace-ms", type=float, default=15.0)
    parser.add_argument("--rest", type=float, default=6.0, help="seconds of scrapes at rest before the plans")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between plans (scrapes at rest)")
    parser.add_argument("--switch-interval", type=float, default=0.00005, help="offloop.SWITCH_INTERVAL to use")
    parser.add_argument("--body-bytes", type=int, default=1_000_000, help="size of the served exposition")
    parser.add_argument(
        "--freeze", action="store_true", help="freeze the snapshot out of the collector's walks (core.gcpolicy)"
    )
    parser.add_argument(
        "--no-free-later",
        dest="free_later",
        action="store_false",
        help="off_loop: free the plan and outcomes on the loop (as to_thread does), not through offloop.free_later",
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(serve_and_plan(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
