"""Synthetic event path, no engine: one image change -> the render of `/metrics` that shows it, and memory.

`python -m benchmarks.events_synthetic [--images 10000,30000] [--changes 1000] [--profile] [--json PATH]`
builds N images in memory (~1.06 tags each, as `exposition_synthetic`), publishes them through the exporter's
own classes (`SnapshotBuilder`, `SnapshotStore`, `ImageHistory` with a real state file, the collector
uncapped: `metrics.max_image_series: 1000000`) and renders `/metrics` once in text and text+gzip. Then it
applies `--changes` image events through `EventApplier` (the event follower's path) against a stand-in engine
that answers image inspects from memory: a tag of a new reference onto a random image, then its untag, and
so on. Each change is timed from the call of `apply` to the end of the render of the Snapshot it published
(the pieces `/metrics` writes one after the other: the text format is not joined into one body), rendered on
publish as `/metrics` starts it then (what the first scrape after the change waits for; the
engine's inspect costs nothing here, so this is the exporter's own share), and to the return of `apply`, which
includes a state-file save on every change (as when changes are a second or more apart). RSS
(`/proc/self/status`, with the exporter's allocator settings: `exporter.core.memory.configure`) is read after
the start, after the changes, and the Python heap's growth over them
(tracemalloc, in a separate pass when `--heap` is given: it slows everything down).

Each size runs in its own process, so one size's memory does not count in the next's. `--profile` prints
cProfile's top functions of the change loop (what a per-image loop on the event path would show in).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gzip
import json
import logging
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from typing import Any, get_args

from prometheus_client import CollectorRegistry

from exporter.config import MetricsConfig
from exporter.core import memory
from exporter.core.logs import WarnOnce
from exporter.core.snapshot import EngineInfo, Filesystem, Image, Snapshot
from exporter.engine import apishapes
from exporter.engine.client import EngineError
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.render import Format, SnapshotRenderer
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state import eventapply
from exporter.state.backfill import TagTimes, tag_key
from exporter.state.builder import SnapshotBuilder
from exporter.state.eventapply import EventApplier
from exporter.state.history import ImageHistory
from exporter.state.store import SnapshotStore

ENGINE = EngineInfo("28.5.1", "1.51", "overlay2", "linux", "amd64")
UNCAPPED = 1_000_000


def raw_image(i: int) -> dict[str, Any]:
    """Image `i` as `/images/{id}/json` answers it (what `parse_image_inspect` reads)."""
    tags: list[str] = []
    if i % 16:  # 1/16 dangling; 1/8 with two tags -> ~1.06 rows per image
        tags.append(f"registry.example:5000/team{i % 40}/app{i % 700}:v{i}")
        if i % 8 == 1:
            tags.append(f"team{i % 40}/app{i % 700}:latest")
    return {
        "Id": f"sha256:{i:064x}",
        "RepoTags": tags,
        "RepoDigests": [f"registry.example:5000/team{i % 40}/app{i % 700}@sha256:{i:064x}"] if i % 3 else [],
        "Created": "2025-01-01T00:00:00Z",
        "Size": 10_000_000 + (i * 7919) % 5_000_000,
        "Config": {"Labels": {"org.opencontainers.image.source": f"https://example.org/app{i % 700}"}},
        "Metadata": {"LastTagTime": "2025-06-01T00:00:00Z"},
    }


class FakeEngine:
    """Answers image inspects as a dockerd with these images would (404 for anything else). Each answer is made
    when asked (kept answers would count in the RSS measured here); `tags` holds the tags added since."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tags: dict[str, str] = {}  # tag added by a change -> image ID

    async def inspect_image(self, name: str) -> dict[str, Any]:
        image_id = self.tags.get(name, name)
        index = int(image_id.removeprefix("sha256:"), 16) if image_id.startswith("sha256:") else -1
        if not 0 <= index < self.n:
            raise EngineError(f"No such image: {name}", status=404)
        raw = raw_image(index)
        raw["RepoTags"] += [tag for tag, holder in self.tags.items() if holder == image_id]
        return raw

    def tag(self, image_id: str, ref: str) -> None:
        self.tags[ref] = image_id

    def untag(self, ref: str) -> str:
        return self.tags.pop(ref)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class Rig:
    """The exporter's state and metrics classes wired as the app wires them, fed by a FakeEngine."""

    def __init__(self, n: int, state_dir: str) -> None:
        self.n = n
        self.engine = FakeEngine(n)
        self.store = SnapshotStore()
        self.history = ImageHistory(os.path.join(state_dir, "state.json"))
        self.tag_times = TagTimes()
        self.builder = SnapshotBuilder(self.store, self.history, self.tag_times, time.time)
        self.collector = SnapshotCollector(self.store, MetricsConfig(max_image_series=UNCAPPED))
        self.renderer = SnapshotRenderer(self.collector)
        self.store.set_up(True)
        self.applier = EventApplier(
            self.engine,  # type: ignore[arg-type]  # only inspect_image is called
            self.builder,
            self.history,
            PollMetrics(CollectorRegistry()),
            asyncio.Lock(),
            WarnOnce(logging.getLogger("bench")),
            started=lambda: True,
            up=lambda: True,
            wake=lambda: None,
            clock=time.time,
        )
        images = [apishapes.parse_image_inspect(raw_image(i), ENGINE) for i in range(n)]
        # a listing has SharedSize; give each image one, as /images/json would
        images = [_with_shared(image, (k * 31) % 1_000_000) for k, image in enumerate(images)]
        now = time.time()
        keys = {i.id: tag_key(i) for i in images}
        self.history.observe(keys, now)
        self.tag_times.relisted(keys.values())
        for key in keys.values():
            self.tag_times.learn(key, 1.7e9)
        self.builder.set_listing((ENGINE, images, [], Filesystem("/var/lib/docker", 10**13, 10**12)), 0.0)
        self.builder.publish(now, keys=keys, offset=0.0)
        self.history.save()

    def render(self, fmt: Format) -> bytes:
        body = self.renderer.render(self.store.snapshot, fmt)
        return gzip.decompress(body) if fmt.endswith("+gzip") else body


def _with_shared(image: Image, shared: int) -> Image:
    return replace(image, shared_size=shared)


async def changes(rig: Rig, count: int, fmt: Format, seed: int = 23) -> tuple[list[float], list[float], list[float]]:
    """`count` changes (tag, untag, tag, ...): for each, the seconds from calling `apply` to the end of the
    render of the Snapshot it published (rendered on publish, as `/metrics` starts rendering then: what the
    first scrape after the change waits for), the CPU seconds of this thread in that span (what a busy machine
    does not inflate), and to the return of `apply` (its state-file save included)."""
    rng = random.Random(seed)
    scraped: list[float] = []
    applied_in: list[float] = []
    cpu: list[float] = []
    rendered: list[tuple[float, float, list[bytes]]] = []

    def render(snapshot: Snapshot) -> None:
        if rig.store.publishing_events:  # the pieces `/metrics` writes (the plain text is not joined)
            pieces = rig.renderer.pieces(snapshot, fmt)
            rendered.append((time.perf_counter(), time.thread_time(), pieces))

    rig.store.on_publish.append(render)
    tagged: tuple[str, str] | None = None
    for k in range(count):
        if tagged is None:
            image_id = f"sha256:{rng.randrange(rig.n):064x}"
            ref = f"bench/probe:c{k}"
            rig.engine.tag(image_id, ref)
            tagged = (image_id, ref)
            needle = f'tag="c{k}"'.encode()
        else:
            image_id, ref = tagged
            rig.engine.untag(ref)
            tagged = None
        rendered.clear()
        if tagged is not None:  # the event follower records a tag's arrival (`ARRIVAL_ACTIONS`) before applying it
            rig.history.mark_arrived(image_id, time.time())
        start, start_cpu = time.perf_counter(), time.thread_time()
        applied = await rig.applier.apply([([image_id], [ref])])
        applied_in.append(time.perf_counter() - start)
        assert applied and len(rendered) == 1, "the change was not applied, or not published once"
        done, done_cpu, pieces = rendered[0]
        scraped.append(done - start)
        cpu.append(done_cpu - start_cpu)
        if fmt.endswith("+gzip"):
            pieces = [gzip.decompress(b"".join(pieces))]
        # a sample line is never split between pieces: no join of the whole body (tens of MB) per change
        assert any(needle in piece for piece in pieces) == (tagged is not None), "the render does not show the change"
    rig.store.on_publish.remove(render)
    return scraped, applied_in, cpu


def one_size(n: int, count: int, fmt: Format, profile: bool, heap: bool) -> dict[str, Any]:
    memory.configure()  # the allocator settings the exporter's launcher makes, before any thread starts
    eventapply.EVENT_SAVE_INTERVAL = 0.0  # a save per change: changes a second or more apart
    with tempfile.TemporaryDirectory(prefix="events-bench-") as state_dir:
        start = time.perf_counter()
        rig = Rig(n, state_dir)
        rig.render(fmt)
        ready = time.perf_counter() - start
        rss_start = rss_mb()
        loop = asyncio.new_event_loop()
        profiler = cProfile.Profile() if profile else None
        if heap:
            tracemalloc.start()
            heap_before = tracemalloc.get_traced_memory()[0]
        if profiler is not None:
            profiler.enable()
        times, applied_in, cpu = loop.run_until_complete(changes(rig, count, fmt))
        if profiler is not None:
            profiler.disable()
        out: dict[str, Any] = {
            "images": n,
            "series": sum(max(1, len(i.refs)) for i in rig.store.snapshot.images) if rig.store.snapshot else 0,
            "changes": count,
            "format": fmt,
            "start_s": round(ready, 2),
            "change_p50_ms": round(statistics.median(times) * 1000, 2),
            "change_p95_ms": round(pct(times, 0.95), 2),
            "change_p99_ms": round(pct(times, 0.99), 2),
            "change_max_ms": round(max(times) * 1000, 2),
            "change_cpu_p50_ms": round(statistics.median(cpu) * 1000, 2),
            "change_cpu_p95_ms": round(pct(cpu, 0.95), 2),
            "apply_with_save_p50_ms": round(statistics.median(applied_in) * 1000, 2),
            "apply_with_save_p95_ms": round(pct(applied_in, 0.95), 2),
            "rss_start_mb": round(rss_start, 1),
            "rss_after_mb": round(rss_mb(), 1),
            "state_file_kb": round(os.path.getsize(os.path.join(state_dir, "state.json")) / 1024),
        }
        if heap:
            out["heap_growth_kb"] = round((tracemalloc.get_traced_memory()[0] - heap_before) / 1024)
            tracemalloc.stop()
        loop.close()
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(18)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", default="10000,30000", help="comma-separated image counts")
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--format", default="text", choices=get_args(Format), help="the scrape's format")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions of the change loop")
    parser.add_argument("--heap", action="store_true", help="also the Python heap's growth (tracemalloc)")
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one size, JSON out
    args = parser.parse_args()
    sizes = [int(s) for s in args.images.split(",")]
    if args.one:
        print(json.dumps(one_size(sizes[0], args.changes, args.format, args.profile, args.heap)))
        return
    results = []
    for n in sizes:
        command = [sys.executable, "-m", "benchmarks.events_synthetic", "--one", "--images", str(n)]
        command += (
            ["--changes", str(args.changes), "--format", args.format]
            + ["--profile"] * args.profile
            + ["--heap"] * args.heap
        )
        answer = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        result = json.loads(answer.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{n:>6} images ({result['series']} series, uncapped, {args.format}): change -> render p50 {result['change_p50_ms']} "
            f"p95 {result['change_p95_ms']} p99 {result['change_p99_ms']} max {result['change_max_ms']} ms "
            f"(CPU p50 {result['change_cpu_p50_ms']} p95 {result['change_cpu_p95_ms']} ms; apply returns, save included: p50 {result['apply_with_save_p50_ms']} "
            f"p95 {result['apply_with_save_p95_ms']} ms) | "
            f"RSS {result['rss_start_mb']} -> {result['rss_after_mb']} MB over {result['changes']} changes"
            + (f" (heap +{result['heap_growth_kb']} KB)" if "heap_growth_kb" in result else "")
            + f" | state file {result['state_file_kb']} KB | start {result['start_s']} s",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"python": sys.version.split()[0], "results": results}, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
