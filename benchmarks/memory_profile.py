"""Where the memory per image goes, no engine: RSS after a synthetic start and after re-listings, and a heap profile.

`python -m benchmarks.memory_profile [--images 30000] [--relists 3] [--top 30] [--frames 1] [--json PATH]`
builds N images in memory through the exporter's own classes, as `events_synthetic` does (uncapped metrics,
a real state file), renders `/metrics` once in text, then re-lists the same images `--relists` times as a poll
does (the listing answer decoded from JSON, parsed, handed to the builder, published and rendered). RSS
(`/proc/self/status`, with the exporter's allocator settings) after the start and after each re-listing, and
`len(gc.get_objects())`. Then, in a second process (tracemalloc inflates RSS), the Python heap after the start
grouped by allocating line (`--frames` > 1: by traceback), top `--top`, and summed by file: which module's
objects hold the memory.

Why re-listings: a poll's transient answer (tens of megabytes at 30k images) interleaved with objects that stay
keeps the allocator's arenas from going back to the system; what a poll keeps decides the RSS a long-running
exporter settles at, more than its start does.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any

from benchmarks.events_synthetic import ENGINE, Rig, raw_image, rss_mb
from exporter.core import memory
from exporter.core.snapshot import Filesystem
from exporter.engine import apishapes
from exporter.state.backfill import tag_key


def listing_answer(n: int) -> bytes:
    """`/images/json` for the Rig's images, as the engine sends it (SharedSize as `Rig` gives them)."""
    entries = []
    for i in range(n):
        raw = raw_image(i)
        labels = raw.pop("Config")["Labels"]
        raw.pop("Metadata")
        entries.append({**raw, "Created": 1735689600, "SharedSize": (i * 31) % 1_000_000, "Labels": labels})
    return json.dumps(entries).encode()


def relist(rig: Rig, answer: bytes) -> None:
    """What a poll does with the listing (the poller's order): parse, tag keys, builder; then publish and render,
    once the answer and the parsed listing are dropped (as `Poller._poll` does)."""
    _take_listing(rig, answer)
    rig.builder.publish(time.time(), offset=0.0)
    rig.render("text")


def _take_listing(rig: Rig, answer: bytes) -> None:
    images = apishapes.parse_images(json.loads(answer), ENGINE)
    keys = {i.id: tag_key(i) for i in images}
    rig.tag_times.relisted(keys.values())
    rig.builder.set_listing((ENGINE, images, [], Filesystem("/var/lib/docker", 10**13, 10**12)), 0.0)


def rss_pass(n: int, relists: int) -> dict[str, Any]:
    memory.configure()
    with tempfile.TemporaryDirectory(prefix="memory-profile-") as state_dir:
        rig = Rig(n, state_dir)
        rig.render("text")
        gc.collect()
        out: dict[str, Any] = {"images": n, "rss_start_mb": round(rss_mb(), 1), "gc_objects": len(gc.get_objects())}
        answer = listing_answer(n)
        after: list[float] = []
        for _ in range(relists):
            relist(rig, answer)
            gc.collect()
            after.append(round(rss_mb(), 1))
        out["rss_after_relists_mb"] = after
        out["gc_objects_after_relists"] = len(gc.get_objects())
    return out


def heap_pass(n: int, top: int, frames: int) -> dict[str, Any]:
    memory.configure()
    tracemalloc.start(frames)
    with tempfile.TemporaryDirectory(prefix="memory-profile-") as state_dir:
        rig = Rig(n, state_dir)
        rig.render("text")
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        del rig
    stats = snapshot.statistics("traceback" if frames > 1 else "lineno")
    files = snapshot.statistics("filename")
    return {
        "traced_mb": round(sum(s.size for s in files) / 1e6, 1),
        "by_file": [
            {"file": s.traceback[0].filename, "mb": round(s.size / 1e6, 2), "blocks": s.count} for s in files[:top]
        ],
        "top": [
            {
                "where": [f"{f.filename}:{f.lineno}" for f in s.traceback],
                "mb": round(s.size / 1e6, 2),
                "blocks": s.count,
            }
            for s in stats[:top]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--relists", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--one", choices=("rss", "heap"), help=argparse.SUPPRESS)  # a child: one pass, JSON out
    args = parser.parse_args()
    if args.one == "rss":
        print(json.dumps(rss_pass(args.images, args.relists)))
        return
    if args.one == "heap":
        print(json.dumps(heap_pass(args.images, args.top, args.frames)))
        return
    result: dict[str, Any] = {"python": sys.version.split()[0]}
    for one in ("rss", "heap"):
        command = [sys.executable, "-m", "benchmarks.memory_profile", "--one", one, "--images", str(args.images)]
        command += ["--relists", str(args.relists), "--top", str(args.top), "--frames", str(args.frames)]
        answer = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        result[one] = json.loads(answer.stdout.strip().splitlines()[-1])
    rss, heap = result["rss"], result["heap"]
    print(
        f"{args.images} images: RSS {rss['rss_start_mb']} MB after the start, {rss['rss_after_relists_mb']} after each "
        f"re-listing; {rss['gc_objects']} objects; Python heap after the start {heap['traced_mb']} MB"
    )
    for row in heap["by_file"]:
        print(f"{row['mb']:9.2f} MB {row['blocks']:9d}  {row['file']}")
    print()
    for row in heap["top"]:
        print(f"{row['mb']:9.2f} MB {row['blocks']:9d}  {' <- '.join(reversed(row['where']))}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
