"""Synthetic catch-up, no engine: the LastTagTime fill behind the first publish, our CPU per filled image.

`python -m benchmarks.catchup_synthetic [--images 10000,30000] [--latency-ms 1.2] [--profile] [--json PATH]`
builds N listed images in memory (the shapes of `events_synthetic`), publishes them with every LastTagTime
pending through the exporter's own classes (`SnapshotBuilder`, `SnapshotStore`, `ImageHistory`, the collector
at its default `metrics.max_image_series`), then runs the poller's `Backfill.fill` with its default batch,
publish interval and share against a stand-in engine whose inspect answers after `--latency-ms` (4 in flight,
as the fill keeps them: ~1.2 ms per 4 puts the fill's wall time near the real engine's at 10k). Every publish
is rendered at once in the text format (what `/metrics`' prerender does once a scrape has asked), and a
scraper renders the current snapshot every 0.1 s (what `benchmarks.catchup` does while it watches). Then the
first `/system/df` is merged (SharedSize for every image) and rendered.

Reported per size: wall and process CPU seconds of the fill, CPU per filled image, the publishes made, and
the same for the /system/df merge. The engine's latency costs no CPU here, so CPU per image is the exporter's
own share: linear means the same figure at 10k and 30k. Each size runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import os
import pstats
import subprocess
import sys
import tempfile
import time
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks.events_synthetic import ENGINE, _with_shared, raw_image
from exporter.config import MetricsConfig
from exporter.core import memory
from exporter.core.logs import WarnOnce
from exporter.core.snapshot import DiskUsage, Filesystem, Snapshot
from exporter.engine import apishapes
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.render import SnapshotRenderer
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state import poller
from exporter.state.backfill import Backfill, TagTimes, tag_key
from exporter.state.builder import SnapshotBuilder
from exporter.state.history import ImageHistory
from exporter.state.store import SnapshotStore

SCRAPE_PACE = 0.1


class SlowInspects:
    """Answers an image inspect after `latency` seconds, as the engine would (LastTagTime set)."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def inspect_image(self, image_id: str) -> dict[str, Any]:
        await asyncio.sleep(self.latency)
        return {"Id": image_id, "Metadata": {"LastTagTime": "2025-06-01T00:00:00Z"}}


async def run(n: int, latency: float, state_dir: str, series: int, whole: bool) -> dict[str, Any]:
    store = SnapshotStore()
    history = ImageHistory(os.path.join(state_dir, "state.json"))
    tag_times = TagTimes()
    builder = SnapshotBuilder(store, history, tag_times, time.time)
    collector = SnapshotCollector(store, MetricsConfig(max_image_series=series))
    renderer = SnapshotRenderer(collector)
    store.set_up(True)
    images = [apishapes.parse_image_inspect(raw_image(i), ENGINE) for i in range(n)]
    images = [_with_shared(image, (k * 31) % 1_000_000) for k, image in enumerate(images)]
    now = time.time()
    history.observe({i.id: tag_key(i) for i in images}, now)
    builder.set_listing((ENGINE, images, [], Filesystem("/var/lib/docker", 10**13, 10**12)), 0.0)
    del images
    tag_times.relisted(map(tag_key, builder.listing[1].values()))  # type: ignore[index]
    publishes = 0

    def prerender(snapshot: Snapshot) -> None:
        nonlocal publishes
        publishes += 1
        renderer.pieces(snapshot, "text")

    builder.publish(now, offset=0.0)
    renderer.pieces(store.snapshot, "text")
    store.subscribe(prerender)
    stop = asyncio.Event()

    async def scraper() -> None:
        scraped: Snapshot | None = None
        while not stop.is_set():
            if store.snapshot is not scraped:  # `/metrics` renders a state once (the prerender did, mostly)
                scraped = store.snapshot
                renderer.pieces(scraped, "text")
            await asyncio.sleep(SCRAPE_PACE)

    in_publish = 0.0

    def republish(learned: set[str]) -> None:
        nonlocal in_publish
        start = time.process_time()
        builder.republish(None if whole else learned)
        in_publish += time.process_time() - start

    backfill = Backfill(
        SlowInspects(latency),  # type: ignore[arg-type]  # only inspect_image is called
        tag_times,
        store,
        PollMetrics(CollectorRegistry()),
        WarnOnce(poller.log),
        asyncio.Lock(),
        republish,
    )
    scraping = asyncio.create_task(scraper())
    wall, cpu = time.perf_counter(), time.process_time()
    if whole:  # the fill as it was: a publish per interval and tenth of the keys, merging every image
        await backfill.fill(
            True, lambda: True, poller.FILL_BATCH, poller.FILL_PUBLISH_INTERVAL, 0.1, max_staleness=math.inf
        )
    else:
        await backfill.fill(True, lambda: True, poller.FILL_BATCH, poller.FILL_PUBLISH_INTERVAL)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop.set()
    await scraping
    assert store.snapshot is not None and store.snapshot.pending_inspects == 0
    fill_publishes = publishes
    # the first /system/df: SharedSize for every image (API 1.41 has it only there)
    df_wall, df_cpu = time.perf_counter(), time.process_time()
    builder.set_disk_usage(_disk_usage(store.snapshot))
    df_wall, df_cpu = time.perf_counter() - df_wall, time.process_time() - df_cpu
    return {
        "images": n,
        "variant": "before" if whole else "after",
        "latency_ms": latency * 1000,
        "fill_wall_s": round(wall, 3),
        "fill_cpu_s": round(cpu, 3),
        "fill_cpu_per_image_us": round(cpu / n * 1e6, 1),
        "fill_publishes": fill_publishes,
        "fill_cpu_in_publishes_s": round(in_publish, 3),
        "fill_cpu_outside_publishes_per_image_us": round((cpu - in_publish) / n * 1e6, 1),
        "df_merge_wall_s": round(df_wall, 3),
        "df_merge_cpu_s": round(df_cpu, 3),
        "df_cpu_per_image_us": round(df_cpu / n * 1e6, 2),
    }


def _disk_usage(snapshot: Snapshot) -> DiskUsage:
    raw = {
        "LayersSize": 10**12,
        "Images": [
            {
                "Id": i.id,
                "ParentId": "",
                "RepoTags": [str(r) for r in i.refs] or None,
                "RepoDigests": [],
                "Created": 1735689600,
                "Size": i.size,
                "SharedSize": 1000 + k % 7,
                "Labels": None,
                "Containers": 0,
            }
            for k, i in enumerate(snapshot.images)
        ],
        "BuildCache": [],
    }
    return apishapes.parse_disk_usage(raw, time.time(), snapshot.engine)


def one_size(n: int, latency: float, series: int, profile: bool, whole: bool) -> dict[str, Any]:
    memory.configure()
    with tempfile.TemporaryDirectory(prefix="catchup-bench-") as state_dir:
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        out = asyncio.run(run(n, latency, state_dir, series, whole))
        if profiler is not None:
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", default="10000,30000", help="comma-separated image counts")
    parser.add_argument("--latency-ms", type=float, default=1.2, help="one inspect's answer time (4 in flight)")
    parser.add_argument("--series", type=int, default=MetricsConfig().max_image_series, help="max_image_series")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions (to stderr)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="alternate with the fill as it was (a publish per second and tenth of the keys, every image merged)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs per size (and variant)")
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.images.split(",")]
    if args.one:
        print(json.dumps(one_size(sizes[0], args.latency_ms / 1000, args.series, args.profile, args.whole)))
        return
    results = []
    for _round in range(args.rounds):
        for n in sizes:
            for whole in [False, True] if args.compare else [False]:
                command = [sys.executable, "-m", "benchmarks.catchup_synthetic", "--one", "--images", str(n)]
                command += ["--latency-ms", str(args.latency_ms), "--series", str(args.series)]
                command += ["--profile"] * args.profile + ["--whole"] * whole
                answer = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
                result = json.loads(answer.stdout.strip().splitlines()[-1])
                results.append(result)
                print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"python": sys.version.split()[0], "results": results}, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
