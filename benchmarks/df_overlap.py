"""Does a /system/df in flight slow the inspects of every image, and the df them? On a private engine.

`python -m benchmarks.df_overlap 10000 [30000] [--rounds 3]`: per round, every image inspected 4 in flight
(as the exporter's LastTagTime fill does) alone, one `/system/df` alone, then both side by side (the df
starting 0.3 s into the inspects), on the cached data roots. What the fill's hold for a df in flight
(`Backfill.disk_usage_call`) rests on: side by side costs more than one after the other.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from benchmarks.clients import EngineAPI
from benchmarks.imageset import ImageSet
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir

DF = "/system/df?type=image&type=build-cache"


def inspect_all(engine: PrivateDockerd, ids: list[str], in_flight: int = 4) -> float:
    apis = [EngineAPI(engine) for _ in range(in_flight)]
    try:
        start = time.perf_counter()
        threads = [threading.Thread(target=a.inspect_all, args=(ids[k::in_flight],)) for k, a in enumerate(apis)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start
    finally:
        for api in apis:
            api.close()


def _df_later(api: EngineAPI, into: list[float]) -> None:
    time.sleep(0.3)
    into.append(api.json("GET", DF)[1])


def one_size(count: int, rounds: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    workdir = short_workdir("die-dfoverlap-")
    try:
        engine = PrivateDockerd(workdir / "e", name="bookworm")
        try:
            ImageSet(count).prepare(engine, timeout=600)
            api = EngineAPI(engine)
            ids = [i["Id"] for i in api.list_images()[0]]
            for _ in range(rounds):
                alone = inspect_all(engine, ids)
                df_alone = api.json("GET", DF)[1]
                during: list[float] = []
                thread = threading.Thread(target=_df_later, args=(api, during))
                thread.start()
                together = inspect_all(engine, ids)
                thread.join()
                row = {
                    "images": count,
                    "inspects_alone_s": round(alone, 2),
                    "inspects_beside_df_s": round(together, 2),
                    "df_alone_s": round(df_alone, 2),
                    "df_beside_inspects_s": round(during[0], 2),
                }
                out.append(row)
                print(json.dumps(row), flush=True)
            api.close()
        finally:
            engine.stop()
    finally:
        remove_workdir(workdir)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("counts", nargs="+", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for count in args.counts:
        one_size(count, args.rounds)


if __name__ == "__main__":
    main()
