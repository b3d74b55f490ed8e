"""Catch-up after ready: what a fresh exporter fills in behind `/-/ready` (LastTagTime inspects, the first
`/system/df`), timed from ready, alone on the engine, next to the raw calls it stands for.

`python -m benchmarks.catchup 10000 [30000]` runs this phase alone on the cached data roots (with py-spy
when `BENCH_PROFILE_CATCHUP=1`); `benchmarks.run` calls `catch_up` as part of a profile.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import procstat, profiling
from benchmarks.clients import EngineAPI, ExporterHTTP
from benchmarks.stats import summary
from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess, find_sample

PENDING = "docker_exporter_pending_inspects"
DISK = "docker_images_disk_usage_bytes"
#: How often the progress is read: fine for figures of seconds, and light (a scrape every 20 ms, 1 MB each at
#: 10k images, slowed the fill it watched).
PACE = 0.1


def catch_up(
    engine: PrivateDockerd, workdir: Path, config: dict[str, Any], rounds: int = 1, profile: Path | None = None
) -> dict[str, Any]:
    """Seconds from `/-/ready` until no LastTagTime is pending, and until the first disk usage is served;
    the reference: every image inspected raw, one after the other, and one raw `/system/df`, beside it."""
    from benchmarks.measure import started

    filled: list[float] = []
    filled_cpu: list[float] = []
    disk: list[float] = []
    ready: list[float] = []
    raw_inspects: list[float] = []
    raw_df: list[float] = []
    prof: dict[str, Any] = {}
    api = EngineAPI(engine)
    try:
        for i in range(rounds):
            images, _ = api.list_images()
            raw_inspects.append(api.inspect_all([img["Id"] for img in images]))
            raw_df.append(api.json("GET", "/system/df")[1])
            cfg = {**config, "state": {"path": str(workdir / f"catchup{i}-state.json")}}
            exp = ExporterProcess(workdir, engine.host, cfg, name=f"catchup{i}")
            try:
                ready.append(started(exp))
                t0 = time.perf_counter()
                assert exp.pid is not None
                if profile is not None and i == 0:
                    with profiling.sampled(exp.pid, profile) as prof:
                        f, d, c = _watch(exp, t0)
                else:
                    f, d, c = _watch(exp, t0)
                filled.append(f)
                filled_cpu.append(c)
                disk.append(d)
            finally:
                exp.stop()
    finally:
        api.close()
    result: dict[str, Any] = {
        "last_tag_times": summary(filled, 3),
        "last_tag_times_cpu": summary(filled_cpu, 3),
        "cpu_per_image_ms": round(summary(filled_cpu, 3)["p50"] / max(1, len(images)) * 1000, 4),
        "first_disk_usage": summary(disk, 3),
        "ready": summary(ready, 3),
        "raw_inspect_every_image": summary(raw_inspects, 3),
        "raw_system_df": summary(raw_df, 3),
    }
    if prof:
        result["profile"] = prof
    return result


def _watch(exp: ExporterProcess, t0: float, timeout: float = 900) -> tuple[float, float, float]:
    """(seconds to no pending inspect, seconds to the first disk usage), both from `t0`, read every PACE, and
    the exporter's CPU seconds (every thread) from `t0` to no pending inspect."""
    assert exp.pid is not None
    client = ExporterHTTP(exp.address)
    filled = disk = cpu = None
    cpu0 = procstat.cpu_seconds(exp.pid)
    try:
        while filled is None or disk is None:
            text, _ = client.scrape()
            now = time.perf_counter() - t0
            if filled is None and find_sample(text, PENDING) == 0:
                filled = now
                cpu = procstat.cpu_seconds(exp.pid) - cpu0
            if disk is None and find_sample(text, DISK) is not None:
                disk = now
            if now > timeout:
                raise RuntimeError(f"catch-up not done after {timeout}s:\n{exp.logs(30)}")
            time.sleep(PACE)
    finally:
        client.close()
    assert cpu is not None
    return filled, disk, cpu


def main(argv: list[str]) -> int:
    from benchmarks.imageset import ImageSet
    from benchmarks.measure import exporter_config
    from tests.harness.dockerd import remove_workdir, short_workdir

    out: dict[str, Any] = {}
    for count in (int(a) for a in argv):
        workdir = short_workdir("die-catchup-")
        try:
            engine = PrivateDockerd(workdir / "e", name="bookworm")
            try:
                ImageSet(count).prepare(engine, timeout=300)
                keep = os.environ.get("BENCH_PROFILE_CATCHUP")  # a path: py-spy's raw stacks go there
                prof = Path(keep) if keep else None
                cfg = exporter_config(engine, workdir / "x", "catchup")
                (workdir / "x").mkdir(exist_ok=True)
                out[str(count)] = catch_up(engine, workdir / "x", cfg, profile=prof)
                print(json.dumps({count: out[str(count)]}, indent=1), flush=True)
            finally:
                engine.stop()
        finally:
            remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
