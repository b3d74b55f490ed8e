"""dockerd's own CPU per image for each request a deletion makes, against `docker image prune -a -f`.

    nice -n 10 .venv/bin/python -m benchmarks.deletion_requests [--images 1000] [--rounds 2] [--out FILE]

No exporter: a private dockerd with `--images` freshly loaded unused images, and the engine's CPU
(`/proc/<pid>/stat`, every thread) per image while this process, over one kept-alive connection, does in turn:
`inspect` (GET /images/{id}/json of each), `inspect_new_conn` (the same over a new connection each time),
`delete` (DELETE /images/{id} of each, no inspect), `inspect_delete` (the executor's pair: inspect, then
DELETE), and `prune` (`docker image prune -a -f`, the CLI's one request). Each load's own work is over
before its measure starts (the engine is idle again). Rates in images/s, CPU in ms per image.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.clients import EngineAPI
from benchmarks.imageset import CACHE_ROOT, ImageSet
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir


def _idle(pid: int, seconds: float = 0.5) -> None:
    """Wait until the engine used under 5 ms CPU in `seconds` (a load's trailing work is over)."""
    for _ in range(60):
        before = procstat.cpu_seconds(pid)
        time.sleep(seconds)
        if procstat.cpu_seconds(pid) - before < 0.005:
            return


def measure(engine: PrivateDockerd, api: EngineAPI, doomed: ImageSet, how: str) -> dict[str, float]:
    images, _ = api.list_images()
    if images:
        raise RuntimeError("the engine must be empty before a load")
    doomed.load(engine)
    ids = [str(i["Id"]) for i in api.list_images()[0]]
    assert engine.pid is not None
    _idle(engine.pid)
    cpu = procstat.cpu_seconds(engine.pid)
    start = time.perf_counter()
    if how == "prune":
        engine.cli("image", "prune", "-a", "-f")
    for image_id in ids if how != "prune" else ():
        quoted = urllib.parse.quote(image_id, safe="")
        if how == "inspect_new_conn":
            fresh = EngineAPI(engine)
            fresh.json("GET", f"/images/{quoted}/json")
            fresh.close()
        if how in ("inspect", "inspect_delete"):
            api.json("GET", f"/images/{quoted}/json")
        if how in ("delete", "inspect_delete"):
            api.remove(image_id)
    seconds = time.perf_counter() - start
    used = procstat.cpu_seconds(engine.pid) - cpu
    if how not in ("delete", "inspect_delete", "prune"):  # the images stay: clear them for the next load
        engine.cli("image", "prune", "-a", "-f")
    return {"per_s": round(len(ids) / seconds, 1), "engine_cpu_ms_per_image": round(used * 1000 / len(ids), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    kinds = ["inspect", "inspect_new_conn", "delete", "inspect_delete", "prune"]
    result: dict[str, Any] = {"images": args.images, "rounds": args.rounds, "by_request": {k: [] for k in kinds}}
    workdir = short_workdir("die-req-")
    try:
        engine = PrivateDockerd(workdir / "d", name="bookworm")
        try:
            doomed = ImageSet(args.images, prefix="bench/del", probe=False, cache_root=CACHE_ROOT)
            engine.start(timeout=120)
            api = EngineAPI(engine)
            for r in range(args.rounds):
                for how in kinds if r % 2 == 0 else reversed(kinds):
                    result["by_request"][how].append(measure(engine, api, doomed, how))
            api.close()
        finally:
            engine.stop()
    finally:
        remove_workdir(workdir)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
