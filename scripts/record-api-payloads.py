#!/usr/bin/env python3
"""Record what each real engine answers, for unit tests that must handle every API shape.

For every engine kind in ``tests/harness/engines.py`` (or those named as arguments) this starts a private
engine, loads the same small set of generated images, does the operations the exporter and its remediation
care about, and saves the raw JSON bodies under ``tests/fixtures/api/<engine>/`` plus an ``index.json``
saying which request produced each file, its HTTP status and the engine's versions.

Requests go over the unix socket without the docker SDK and without a version prefix, so each file is what
that engine sends at its own API version. Needs root (private engines). Run from the repository root:

    .venv/bin/python scripts/record-api-payloads.py [engine ...] [--out tests/fixtures/api]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.dockerd import PrivateDockerd, unix_http  # noqa: E402
from tests.harness.engines import ENGINE_NAMES, prepare_engine, start_engine  # noqa: E402
from tests.harness.images import LAYER_MTIME, ImageSpec, Layer, load_images  # noqa: E402

TINI = Path("/usr/bin/tini-static")  # static, so it runs in an image without libc: a container that starts
# Fixed creation times keep classic-store image IDs (config digests) identical across engines and runs.
EPOCH = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class ExecLayer(Layer):
    """A layer with one executable file at ``/<name>`` (the generic Layer writes 0644 files)."""

    def tar_bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in sorted(self.files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o755, LAYER_MTIME
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    @cached_property
    def diff_id(self) -> str:
        import hashlib

        return "sha256:" + hashlib.sha256(self.tar_bytes()).hexdigest()


def image_set() -> dict[str, ImageSpec]:
    """Small images covering the shapes that matter: shared layers, two tags, host:port name, dangling, labels."""
    base = Layer.random(48 * 1024, "record-base")  # shared by app, web, dangling, doomed
    return {
        "app": ImageSpec(
            tags=["127.0.0.1:5000/ns/app:1", "app:latest"],
            layers=[base, Layer.random(16 * 1024, "record-app")],
            created=EPOCH,
            labels={"org.example.team": "payments", "org.example.tier": "backend"},
        ),
        "web": ImageSpec(
            tags=["team/web:1.0"],
            layers=[base, Layer.random(24 * 1024, "record-web")],
            created=EPOCH - timedelta(days=3),
        ),
        "runner": ImageSpec(
            tags=["runner:1"],
            layers=[ExecLayer({"tini": TINI.read_bytes()})],
            created=EPOCH - timedelta(days=7),
            cmd=["/tini", "--version"],
        ),
        "dangling": ImageSpec(
            layers=[base, Layer.random(8 * 1024, "record-dangling")], created=EPOCH - timedelta(days=14)
        ),
        "doomed": ImageSpec(
            tags=["doomed:1"],
            layers=[base, Layer.random(4 * 1024, "record-doomed")],
            created=EPOCH - timedelta(days=30),
        ),
        "old": ImageSpec(
            tags=["old/tool:0.1"],
            layers=[Layer.random(12 * 1024, "record-old")],
            created=EPOCH - timedelta(days=90),
            labels={"org.example.prune": "yes"},
        ),
    }


class Recorder:
    """Sends requests to one engine and writes each answer to a file, noting it in ``index.json``."""

    def __init__(self, engine: PrivateDockerd, out: Path) -> None:
        self.engine = engine
        self.out = out
        self.index: dict[str, Any] = {"files": {}}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        status, raw = unix_http(self.engine.socket, method, path, body=data, timeout=120)
        text = raw.decode(errors="replace").strip()
        try:
            parsed: Any = json.loads(text) if text else None
        except ValueError:
            # /events and a few others answer newline-delimited JSON
            try:
                parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError:
                parsed = text
        return status, parsed

    def record(self, filename: str, method: str, path: str, body: Any = None, *, note: str = "") -> Any:
        status, parsed = self.call(method, path, body)
        (self.out / filename).write_text(_compact(parsed))
        entry: dict[str, Any] = {"request": f"{method} {urllib.parse.unquote(path)}", "status": status}
        if note:
            entry["note"] = note
        self.index["files"][filename] = entry
        print(f"  {status} {method} {urllib.parse.unquote(path)} -> {filename}")
        return parsed

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, parsed = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status}: {parsed}")
        return parsed


def _compact(value: Any) -> str:
    """Small but diffable: one line per list item (events, images), keys in the engine's order."""
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(json.dumps(item) for item in value) + "\n]\n"
    return json.dumps(value) + "\n"


def _same_id(a: str, b: str) -> bool:
    return a.removeprefix("sha256:") == b.removeprefix("sha256:")


def q(filters: dict[str, list[str]]) -> str:
    return urllib.parse.quote(json.dumps(filters, separators=(",", ":")))


def record_engine(name: str, out_root: Path) -> dict[str, Any]:
    spec = prepare_engine(name)
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"die-rec-{name[:6]}-", dir="/tmp"))
    started = time.monotonic()
    engine = start_engine(spec, workdir)
    start_seconds = time.monotonic() - started
    try:
        rec = Recorder(engine, out)
        specs = image_set()
        t0 = int(time.time()) - 1
        load_started = time.monotonic()
        ids = dict(zip(specs, load_images(engine, list(specs.values())), strict=True))
        load_seconds = time.monotonic() - load_started
        rec.ok("POST", "/images/doomed:1/tag?repo=doomed&tag=2")
        rec.ok("POST", "/containers/create?name=c-run", {"Image": "runner:1", "HostConfig": {"NetworkMode": "none"}})
        rec.ok("POST", "/containers/c-run/start")
        rec.ok("POST", "/containers/c-run/wait")
        rec.ok(
            "POST", "/containers/create?name=c-web", {"Image": "team/web:1.0", "HostConfig": {"NetworkMode": "none"}}
        )

        rec.record("version.json", "GET", "/version")
        rec.record("info.json", "GET", "/info")
        rec.record("images.json", "GET", "/images/json")
        rec.record(
            "images-shared-size.json", "GET", "/images/json?shared-size=1", note="shared-size honoured from 1.42"
        )
        rec.record("containers-all.json", "GET", "/containers/json?all=1")
        rec.record("system-df.json", "GET", "/system/df")
        rec.record(
            "system-df-image-build-cache.json",
            "GET",
            "/system/df?type=image&type=build-cache",
            note="`type` is repeated per kind; honoured from 1.42, ignored before",
        )
        rec.record("image-inspect.json", "GET", f"/images/{ids['app']}/json")
        rec.record("delete-untag.json", "DELETE", "/images/doomed:2", note="one of two tags: only untags")
        rec.record("delete-image.json", "DELETE", "/images/doomed:1", note="last tag: untags and deletes")
        rec.record("delete-conflict.json", "DELETE", "/images/team/web:1.0", note="used by stopped container c-web")
        rec.record("delete-unknown.json", "DELETE", "/images/nosuch:404")
        rec.record("prune-dangling.json", "POST", f"/images/prune?filters={q({'dangling': ['true']})}")
        rec.record(
            "prune-unused-label.json",
            "POST",
            f"/images/prune?filters={q({'dangling': ['false'], 'label': ['org.example.prune=yes']})}",
            note="dangling=false: every unused image, narrowed by label",
        )
        rec.ok("DELETE", "/containers/c-run")
        rec.record("images-after.json", "GET", "/images/json")
        time.sleep(1.1)  # until is exclusive at second resolution on some engines
        t1 = int(time.time()) + 1
        rec.record(
            "events.json",
            "GET",
            f"/events?since={t0}&until={t1}&filters={q({'type': ['image', 'container']})}",
            note="newline-delimited JSON stream, stored as a list",
        )
        version = rec.ok("GET", "/version")
        rec.index.update(
            engine=name,
            description=spec.description,
            api_version=version.get("ApiVersion"),
            version=version.get("Version"),
            recorded_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            start_seconds=round(start_seconds, 2),
            load_seconds=round(load_seconds, 2),
            # engine_id only where it is not the config digest (containerd store: the manifest digest)
            images={
                key: {"tags": list(s.tags), "config_digest": s.image_id}
                | ({} if _same_id(ids[key], s.image_id) else {"engine_id": ids[key]})
                for key, s in specs.items()
            },
        )
        files = rec.index.pop("files")
        rec.index["files"] = files  # after the summary, one line per recorded file
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in rec.index.items())
        (out / "index.json").write_text("{\n" + body + "\n}\n")
        return rec.index
    finally:
        engine.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engines", nargs="*", default=list(ENGINE_NAMES), help="engine names (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "api")
    opts = parser.parse_args()
    for name in opts.engines:
        print(f"{name}:")
        index = record_engine(name, opts.out)
        print(f"  API {index['api_version']}, started in {index['start_seconds']}s, loaded in {index['load_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
