"""Synthetic /metrics cost for issue 14, no engine: prometheus_client's handler (before) vs exposition's cache.

`python -m benchmarks.exposition_synthetic` builds Snapshot objects in memory (1k and 10k images, ~1.06 tags
each, capped at 2000 series and uncapped), and times the handler calls directly (no HTTP): "before" is the old
handler plus the gzip aiohttp then did on the loop, "cached" a scrape of an already rendered snapshot (all of it
on the loop), and the first scrape after three kinds of publish (it waits for the render in a worker thread).
The end-to-end benchmark against a real engine is `benchmarks/run.py`.
"""

from __future__ import annotations

import asyncio
import gzip
import statistics
import time
from dataclasses import replace
from types import MappingProxyType

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler

from exporter.config import MetricsConfig
from exporter.core.snapshot import BuildCache, DiskUsage, EngineInfo, Filesystem, Image, ImageRef, Snapshot
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.selfmetrics import PollMetrics, register_runtime_metrics
from exporter.web.exposition import MetricsEndpoint, PiecesPayload

OM = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def snapshot(n: int) -> Snapshot:
    images = []
    for i in range(n):
        refs: tuple[ImageRef, ...] = ()
        if i % 16:  # 1/16 dangling; 1/8 with two tags -> ~1.06 rows per image like the 10,625 at 10k
            refs = (ImageRef(f"registry.example:5000/team{i % 40}/app{i % 700}", f"v{i}"),)
            if i % 8 == 1:
                refs += (ImageRef(f"team{i % 40}/app{i % 700}", "latest"),)
        images.append(
            Image(
                id=f"sha256:{i:064x}",
                refs=refs,
                digests=("x@sha256:1",) if i % 3 else (),
                created=1.7e9 + i,
                size=10_000_000 + (i * 7919) % 5_000_000,
                shared_size=(i * 31) % 1_000_000,
                labels=MappingProxyType({}),
                containers=i % 5 == 0,
                last_tag_time=1.7e9 + i,
                last_used=1.75e9 + i if i % 2 else None,
            )
        )
    return Snapshot(
        taken_at=1.76e9,
        engine=EngineInfo("20.10.24", "1.41", "overlay2", "linux", "amd64"),
        images=tuple(images),
        disk_usage=DiskUsage(1.76e9, 10**12, 10**11, MappingProxyType({}), BuildCache(1, 1, 1)),
        filesystem=Filesystem("/var/lib/docker", 10**13, 10**12),
    )


class Poller:
    def __init__(self, snap: Snapshot) -> None:
        self.snapshot, self.up = snap, True


def ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms"


async def main() -> None:
    for n in (1_000, 10_000):
        for cap in (2_000, 10**9):
            snap = snapshot(n)
            poller = Poller(snap)
            registry = CollectorRegistry(auto_describe=True)
            PollMetrics(registry)
            register_runtime_metrics(registry)
            collector = SnapshotCollector(poller, MetricsConfig(max_image_series=cap))
            registry.register(collector)
            old = make_aiohttp_handler(registry)
            endpoint = MetricsEndpoint(registry, collector)
            label = f"{n:>6} images, cap {'none' if cap > n * 2 else cap}"
            size = len(generate_latest(registry))
            print(f"{label}: exposition {size / 1e6:.2f} MB")
            reps = 20 if n == 10_000 else 60
            for name, accept, enc in (("text", "", ""), ("openmetrics+gzip", OM, "gzip")):
                headers = {k: v for k, v in (("Accept", accept), ("Accept-Encoding", enc)) if v}
                before = []
                for _ in range(reps):  # old handler + the gzip aiohttp would then do on the loop
                    t = time.perf_counter()
                    ref = await old(make_mocked_request("GET", "/metrics", headers=headers))
                    assert isinstance(ref, web.Response) and isinstance(ref.body, bytes)
                    if enc:
                        gzip.compress(ref.body, 6)
                    before.append(time.perf_counter() - t)
                await endpoint.handle(make_mocked_request("GET", "/metrics", headers=headers))  # first render
                colds = []
                for published in (
                    replace(snap, taken_at=snap.taken_at + 1),  # a /system/df result: the same images tuple
                    replace(snap, images=tuple(replace(i) for i in snap.images)),  # a quiet poll: equal images
                    replace(snap, images=snap.images[1:]),  # an image went away
                ):
                    poller.snapshot = published
                    cold_start = time.perf_counter()
                    await endpoint.handle(make_mocked_request("GET", "/metrics", headers=headers))
                    colds.append(f"{(time.perf_counter() - cold_start) * 1000:.0f}")
                poller.snapshot = snap
                await endpoint.handle(make_mocked_request("GET", "/metrics", headers=headers))
                after = []
                for _ in range(reps * 10):
                    t = time.perf_counter()
                    r = await endpoint.handle(make_mocked_request("GET", "/metrics", headers=headers))
                    after.append(time.perf_counter() - t)
                sent = b"".join(r.body.pieces) if isinstance(r.body, PiecesPayload) else r.body
                assert isinstance(sent, bytes)  # the plain text is written as its pieces, gzip as one member
                body = gzip.decompress(sent) if enc else sent
                assert body.count(b"docker_image_size_bytes{") == min(
                    cap, sum(max(1, len(i.refs)) for i in snap.images)
                )
                print(
                    f"  {name:17} before {ms(before)} | cached {ms(after)} | first after a publish after a df publish / a quiet poll / an image removed: {chr(47).join(colds)} ms"
                )


if __name__ == "__main__":
    asyncio.run(main())
