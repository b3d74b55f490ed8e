"""The benchmark's image sets, generated once and cached between runs.

Generating a `docker save` tar of 10,000 tiny images takes well under a second; `docker load`-ing it takes
minutes (the engine writes every image config and its reference store one by one). So the cache keeps both:
`images.tar` (reused to load a fresh engine, e.g. the deletion rounds) and `dataroot.tar`, the private
engine's whole data root right after the load, which a later run unpacks in seconds instead of loading.
The cache key hashes everything that changes what ends up on disk: the generator parameters, this
module's format version and the engine (name and `dockerd --version`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.harness.dockerd import PrivateDockerd, find_program
from tests.harness.images import ImageSpec, Layer, tiny_images, write_save_tar

CACHE_ROOT = Path(os.environ.get("BENCH_CACHE_DIR", "/var/cache/docker-image-exporter-bench"))
#: Bump when the generated content changes in a way the parameters below do not capture.
FORMAT = 1
#: Fixed creation base: equal parameters give equal image IDs on every run (a cache hit).
CREATED_BASE = datetime(2026, 1, 1, tzinfo=UTC)
PROBE_REPO = "bench/probe"
MIB = 1024 * 1024


def engine_fingerprint(engine: PrivateDockerd) -> str:
    """What decides the data root format: the engine flavour and its dockerd build."""
    dockerd = find_program("dockerd", engine.env["PATH"]) or "dockerd"
    out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, env=engine.env, check=False)
    return f"{engine.name} {out.stdout.strip()} {' '.join(engine.extra_args)}"


@dataclass(frozen=True)
class ImageSet:
    """`count` tiny images sharing one 256 KiB layer (100 tags per repository), plus, when `probe`, one
    bigger image `bench/probe:base` that stays first in the capped per-tag series, so tags added to it
    show up in a default-settings scrape."""

    count: int
    prefix: str = "bulk/img"
    probe: bool = True
    cache_root: Path = field(default=CACHE_ROOT)

    def specs(self) -> list[ImageSpec]:
        specs = tiny_images(
            self.count, prefix=self.prefix, shared=Layer.random(256 * 1024, "bench-base"), now=CREATED_BASE
        )
        if self.probe:
            specs.append(
                ImageSpec(tags=[f"{PROBE_REPO}:base"], layers=[Layer.random(MIB, "bench-probe")], created=CREATED_BASE)
            )
        return specs

    def key(self, engine_id: str) -> str:
        params = {
            "format": FORMAT,
            "count": self.count,
            "prefix": self.prefix,
            "probe": self.probe,
            "engine": engine_id,
        }
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    def cache_dir(self, engine: PrivateDockerd) -> Path:
        return self.cache_root / f"{self.count}-{self.key(engine_fingerprint(engine))}"

    def save_tar(self, engine: PrivateDockerd) -> tuple[Path, float]:
        """The cached `docker save` tar, generated when missing; (path, seconds spent generating now)."""
        directory = self.cache_dir(engine)
        tar = directory / "images.tar"
        if tar.exists():
            return tar, 0.0
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        tmp = directory / f"images.tar.{os.getpid()}.tmp"
        write_save_tar(self.specs(), tmp)
        os.replace(tmp, tar)
        return tar, time.perf_counter() - start

    def prepare(self, engine: PrivateDockerd, *, use_cache: bool = True, timeout: float = 120) -> dict[str, Any]:
        """Start `engine` holding this set: from the cached data root when present, else load and cache it.

        The engine must not be running and its data root must be empty. Returns how it went (which path,
        seconds per step) for the report.
        """
        directory = self.cache_dir(engine)
        dataroot = directory / "dataroot.tar"
        info: dict[str, Any] = {"cache_dir": str(directory), "images": self.count + int(self.probe)}
        if use_cache and dataroot.exists():
            start = time.perf_counter()
            engine.data_root.mkdir(parents=True, exist_ok=True)
            _tar("-xf", str(dataroot), "-C", str(engine.data_root))
            info["restore_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            engine.start(timeout=timeout)
            info["engine_start_seconds"] = round(time.perf_counter() - start, 2)
            info["source"] = "dataroot-cache"
            return info
        tar, generated = self.save_tar(engine)
        info["generate_seconds"] = round(generated, 2)
        engine.start(timeout=timeout)
        start = time.perf_counter()
        engine.cli("load", "-q", "-i", str(tar), timeout=3600)
        info["load_seconds"] = round(time.perf_counter() - start, 2)
        info["source"] = "docker load"
        if use_cache:
            engine.stop()
            start = time.perf_counter()
            tmp = directory / f"dataroot.tar.{os.getpid()}.tmp"
            _tar("-cf", str(tmp), "-C", str(engine.data_root), ".")
            os.replace(tmp, dataroot)
            info["cache_write_seconds"] = round(time.perf_counter() - start, 2)
            engine.start(timeout=timeout)
        return info

    def load(self, engine: PrivateDockerd) -> float:
        """`docker load` this set into a running engine (fresh images for deletion rounds); seconds."""
        tar, _ = self.save_tar(engine)
        start = time.perf_counter()
        engine.cli("load", "-q", "-i", str(tar), timeout=3600)
        return time.perf_counter() - start


def _tar(*args: str) -> None:
    # numeric owners and xattrs: the data root must come back exactly as the engine wrote it
    subprocess.run(["tar", "--numeric-owner", "--xattrs", *args], check=True, capture_output=True)


def main(argv: list[str]) -> int:
    """`python -m benchmarks.imageset 10000 30000`: build the cached data roots ahead of a `make bench` (a 30k
    load takes the engine 10+ minutes; the run itself then restores it in seconds)."""
    from tests.harness.dockerd import remove_workdir, short_workdir

    for count in (int(a) for a in argv):
        workdir = short_workdir("die-bench-prep-")
        try:
            engine = PrivateDockerd(workdir / "e", name="bookworm")
            try:
                info = ImageSet(count).prepare(engine, timeout=300)
                print(json.dumps({"count": count, **info}), flush=True)
            finally:
                engine.stop()
        finally:
            remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
