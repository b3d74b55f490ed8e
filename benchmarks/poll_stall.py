"""Does the periodic full poll (`poll.interval`, 30 s by default) stall the scrapes at 30k?

    nice -n 10 .venv/bin/python -m benchmarks.poll_stall [--images 30000] [--seconds 40] [--interval 4s]

`make bench` runs its exporters with a 10-minute poll interval, so that a change's latency is the event
path's; a host runs the default, a full re-list every 30 s. Here the bench's default-settings exporter on
the cached image set is scraped every 15 ms for `--seconds`, once with the bench's 10-minute interval (no
poll in the window: at rest) and once with `--interval` (several full polls in the window; each scrape reads the polls counter from
the body it gets). Output: per window, the scrapes' p50/p95/p99/max, how many took over 25/50/100/250/500 ms,
and the polls counted, as JSON (and `--out`); `--spy FILE`: py-spy samples (the thread holding the
interpreter lock) of the exporter while it is polled: where the event loop's time per poll goes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import measure, profiling
from benchmarks.clients import ExporterHTTP
from benchmarks.imageset import CACHE_ROOT, ImageSet
from benchmarks.stats import summary
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess


def scraped(exp: ExporterProcess, seconds: float, pace: float = measure.SCRAPE_PACE) -> list[tuple[float, float]]:
    """(polls counter in the body, latency) per scrape, every `pace` for `seconds`."""
    client = ExporterHTTP(exp.address)
    out: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            body, took = client.scrape()
            at = body.find(f"\n{measure.POLLS} ") + len(measure.POLLS) + 2
            polls = float(body[at : body.index("\n", at)])
            out.append((polls, took))
            time.sleep(max(0.0, pace - took))
    finally:
        client.close()
    return out


def loop_time_in_polls(raw: Path, rate: int = 200) -> dict[str, float]:
    """Seconds the event loop spent in `Poller._poll`, and worker threads in decoding and parsing, from py-spy's
    raw stacks (`--gil`: the thread holding the lock; a worker's stacks go through `_worker`)."""
    loop = threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "_worker (" in stack:
            threads += int(count) if ("parse_listing (" in stack or "decode (" in stack) else 0
        elif "Poller._poll (" in stack:
            loop += int(count)
    return {"loop_in_polls_s": loop / rate, "threads_decoding_and_parsing_s": threads / rate}


def window(
    engine: PrivateDockerd, workdir: Path, interval: str, seconds: float, spy: Path | None = None
) -> dict[str, Any]:
    config = measure.exporter_config(engine, workdir, f"poll-{interval}")
    config["poll"] = {"interval": interval, "disk_usage_interval": "10m"}
    exp = ExporterProcess(workdir, engine.host, config, name=f"poll-{interval}")
    try:
        measure.started(exp)
        client = ExporterHTTP(exp.address, token=measure.TOKEN)
        measure.wait_until(lambda: client.sample(measure.PENDING) == 0, 600, "LastTagTimes filled")
        profile: dict[str, Any] = {}
        if spy is None:
            samples = scraped(exp, seconds)
        else:
            with profiling.sampled(exp.pid or 0, spy) as profile:
                samples = scraped(exp, seconds)
        latencies = [took for _, took in samples]
        return {
            "interval": interval,
            "polls": samples[-1][0] - samples[0][0],
            "scrapes": summary(latencies),
            "over_ms": {str(ms): sum(took > ms / 1000 for took in latencies) for ms in (25, 50, 100, 250, 500)},
            **({"profile": {**profile, **loop_time_in_polls(spy)}} if spy is not None else {}),
        }
    finally:
        exp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--interval", default="4s")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--spy", type=Path, help="py-spy (--gil) of the exporter while polled, raw stacks here")
    args = parser.parse_args()
    workdir = short_workdir("die-pollstall-")
    result: dict[str, Any] = {"images": args.images}
    try:
        engine = PrivateDockerd(workdir / "e", name="bookworm")
        try:
            result["setup"] = ImageSet(args.images, cache_root=CACHE_ROOT).prepare(engine, timeout=600)
            result["at_rest"] = window(engine, workdir / "x", "10m", args.seconds)
            result["with_polls"] = window(engine, workdir / "x", args.interval, args.seconds, args.spy)
        finally:
            engine.stop()
    finally:
        remove_workdir(workdir)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
