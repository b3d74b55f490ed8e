"""Images without a registry or a build: `docker save`-format tars generated in Python, then `docker load`.

Generating the config ourselves makes every fact a test asserts on predictable - the image ID (sha256 of
the config), tags, labels, `created` (so ages can be backdated) and exact layer sizes - and the legacy
save layout (manifest.json + `<id>.json` + `<layer>/layer.tar`) is accepted by `docker load` on every
engine we support, including 28.x and Podman.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import struct
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.harness.dockerd import PrivateDockerd

#: Fixed tar metadata so equal content gives equal diff IDs on every run.
LAYER_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
#: `docker create` needs a command; the container is never started, so the binary need not exist.
DEFAULT_CMD = ("/noop",)

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_arch() -> str:
    """The engine's architecture name; a foreign one would make containerd-store engines refuse the image."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


class _GeneratedFiles(Mapping[str, bytes]):
    """File contents produced on demand from a seed, so big layers do not sit in memory."""

    def __init__(self, sizes: Mapping[str, tuple[str, int]]) -> None:
        self._sizes = dict(sizes)

    def __getitem__(self, name: str) -> bytes:
        seed, size = self._sizes[name]
        return hashlib.shake_256(seed.encode()).digest(size)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def size_of(self, name: str) -> int:
        return self._sizes[name][1]


@dataclass(frozen=True, eq=False)
class Layer:
    """One filesystem layer: path -> content. Identity is `diff_id` (equal Layers are one shared layer)."""

    files: Mapping[str, bytes]
    #: file modes other than 0o644 (e.g. 0o755 for the pause binary)
    modes: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def random(cls, size: int, seed: str) -> Layer:
        """`size` incompressible bytes in one file: image sizes add up exactly; pushes cannot shrink it."""
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", seed)[:60] or "blob"
        name = f"data/{slug}-{hashlib.sha256(seed.encode()).hexdigest()[:8]}.bin"
        return cls(_GeneratedFiles({name: (seed, size)}))

    @classmethod
    def text(cls, name: str, content: str | bytes) -> Layer:
        return cls({name: content.encode() if isinstance(content, str) else content})

    @classmethod
    def pause(cls, name: str = "pause") -> Layer:
        """A static binary that sleeps forever, so tests can run a real container (x86_64 only)."""
        return cls({name: pause_binary()}, modes={name: 0o755})

    @property
    def size(self) -> int:
        """Bytes of file content: what the classic store counts as this layer's size."""
        if isinstance(self.files, _GeneratedFiles):
            return sum(self.files.size_of(n) for n in self.files)
        return sum(len(v) for v in self.files.values())

    def tar_bytes(self) -> bytes:
        """The layer as a deterministic tar (sorted, fixed mtime/owner, parent directories included)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs: set[str] = set()
            for name in sorted(self.files):
                clean = name.strip("/")
                parts = clean.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        tar.addfile(self._info(d, tarfile.DIRTYPE, 0o755))
                data = self.files[name]
                info = self._info(clean, tarfile.REGTYPE, self.modes.get(name, 0o644))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    @staticmethod
    def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = LAYER_MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    @cached_property
    def diff_id(self) -> str:
        """`sha256:<hex>` of the uncompressed layer tar, as it appears in the image config's rootfs."""
        return "sha256:" + hashlib.sha256(self.tar_bytes()).hexdigest()


def pause_binary() -> bytes:
    """A 129-byte static x86_64 ELF looping on pause(2): a long-running PID 1 without any distro files.

    As PID 1 it ignores SIGTERM (no handler), so stop such containers with `docker rm -f` / a short timeout.
    """
    if host_arch() != "amd64":
        raise RuntimeError(f"pause_binary is x86_64 only, this is {host_arch()}")
    code = bytes.fromhex("b8220000000f05ebf7")  # mov eax, 34 (pause); syscall; jmp back
    base, hdr = 0x400000, 64 + 56
    total = hdr + len(code)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9),
        2,  # ET_EXEC
        0x3E,  # x86-64
        1,
        base + hdr,  # entry
        64,  # program headers right after this header
        0,
        0,
        64,
        56,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)  # PT_LOAD, R+X
    return ehdr + phdr + code


def _rfc3339(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("ImageSpec.created must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, eq=False)
class ImageSpec:
    """What one generated image is; every engine-visible fact follows from these fields."""

    tags: Sequence[str] = ()
    layers: Sequence[Layer] = ()
    created: datetime = field(default_factory=_now)
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Sequence[str] = DEFAULT_ENV
    cmd: Sequence[str] = DEFAULT_CMD

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("an ImageSpec needs at least one layer")
        if isinstance(self.tags, str):
            raise TypeError("tags must be a sequence of references, not a string")

    @cached_property
    def config_json(self) -> bytes:
        """The config exactly as written into the tar; its sha256 is the image ID on the classic store."""
        created = _rfc3339(self.created)
        config = {
            "architecture": host_arch(),
            "os": "linux",
            "created": created,
            "config": {
                "Env": list(self.env),
                "Cmd": list(self.cmd),
                "Labels": dict(self.labels) or None,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": created, "created_by": "tests.harness.images"} for _ in self.layers],
        }
        return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()

    @property
    def image_id(self) -> str:
        """`sha256:<hex>` the classic store will report (containerd-store engines use the manifest digest)."""
        return "sha256:" + hashlib.sha256(self.config_json).hexdigest()

    @property
    def short_id(self) -> str:
        """12-hex short ID, as in the exporter's `image_id` label and `docker images`."""
        return self.image_id.removeprefix("sha256:")[:12]

    @property
    def size(self) -> int:
        """Sum of layer sizes: `Size` on the classic store."""
        return sum(layer.size for layer in self.layers)

    @property
    def created_timestamp(self) -> float:
        """`created` truncated to what the engine keeps, as a unix timestamp."""
        return self.created.timestamp()

    @property
    def dangling(self) -> bool:
        return not self.tags


def write_save_tar(specs: Sequence[ImageSpec], dest: Path) -> Path:
    """Write all `specs` into ONE `docker save`-format tar (each distinct layer once) at `dest`."""
    seen: dict[str, ImageSpec] = {}
    for spec in specs:
        if spec.image_id in seen and seen[spec.image_id] is not spec:
            raise ValueError(
                f"two specs produce the same image {spec.short_id} (tags {list(spec.tags)} and "
                f"{list(seen[spec.image_id].tags)}): give them different layers, labels or created times, "
                "or put all the tags on one spec"
            )
        seen[spec.image_id] = spec
    manifest = []
    written: set[str] = set()
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in seen.values():
            layer_paths = []
            for layer in spec.layers:
                hexid = layer.diff_id.removeprefix("sha256:")
                path = f"{hexid}/layer.tar"
                if hexid not in written:
                    written.add(hexid)
                    _add(tar, f"{hexid}/VERSION", b"1.0")
                    _add(tar, path, layer.tar_bytes())
                layer_paths.append(path)
            config_name = spec.image_id.removeprefix("sha256:") + ".json"
            _add(tar, config_name, spec.config_json)
            manifest.append({"Config": config_name, "RepoTags": list(spec.tags) or None, "Layers": layer_paths})
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return dest


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = LAYER_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def load_images(engine: PrivateDockerd, specs: Sequence[ImageSpec]) -> list[str]:
    """`docker load` all specs in one tar; returns the engine's image ID for each spec, in order.

    On the classic store that is the predicted `spec.image_id`; where the engine uses another ID (the
    containerd store's manifest digest) it is looked up by the first tag.
    """
    if not specs:
        return []
    with tempfile.TemporaryDirectory(dir=engine.workdir, prefix="load-") as tmp:
        tar_path = write_save_tar(specs, Path(tmp) / "images.tar")
        out = engine.cli("load", "-q", "-i", str(tar_path)).stdout.decode()
    # untagged images are only named by the load output ("Loaded image ID: <id>"), in manifest order
    untagged_ids = iter(re.findall(r"Loaded image ID: (\S+)", out))
    present = {img["Id"] for img in engine.get_json("/images/json?all=1")}
    ids = []
    for spec in specs:
        if spec.image_id in present:
            ids.append(spec.image_id)
        elif spec.tags:
            ids.append(str(engine.get_json(f"/images/{spec.tags[0]}/json")["Id"]))
        else:
            ids.append(next(untagged_ids, spec.image_id))
    return ids


def listed_ref(engine: PrivateDockerd, ref: str) -> str:
    """How the engine lists a reference we loaded or tagged as ``ref``: as given on dockerd (either store);
    Podman qualifies short names (``localhost/app:1`` after a load, ``docker.io/library/app:1`` when
    tagged through the API). Read from the engine's own ``/images/json``; KeyError if it lists no such tag.
    """
    listed = [t for img in engine.get_json("/images/json") for t in (img.get("RepoTags") or [])]
    for candidate in (ref, f"localhost/{ref}", f"docker.io/library/{ref}", f"docker.io/{ref}"):
        if candidate in listed:
            return candidate
    raise KeyError(f"{ref!r} is not among the engine's tags {sorted(listed)}")


def load_successors(engine: PrivateDockerd, specs: Sequence[ImageSpec]) -> list[str]:
    """Load images that take over tags of images already there, leaving those dangling as a rebuild does.

    A plain `docker load` does that on the classic store, on Docker 28's containerd store and on Podman.
    Docker 26.1's containerd store instead *deletes* an image whose last tag a load takes (no dangling
    record; `docker tag` over an existing tag does keep one), so on the containerd store the successors
    are loaded under temporary tags and moved with `docker tag`. Not on Podman: its API qualifies names
    given to `tag` as `docker.io/library/...`, which would leave the loaded `localhost/...` tags in place.
    """
    from tests.harness.engines import engine_store  # engines imports dockerd, which imports nothing of ours

    if not specs or engine_store(engine) != "containerd":
        return load_images(engine, specs)
    staged = [replace(spec, tags=[f"die-successor/{spec.short_id}:staged"]) for spec in specs]
    ids = load_images(engine, staged)
    for spec, stage in zip(specs, staged, strict=True):
        for tag in spec.tags:
            engine.cli("tag", stage.tags[0], tag)
        engine.cli("rmi", stage.tags[0])  # only untags: the image keeps its real tags
    return ids


def make_dangling(engine: PrivateDockerd, spec: ImageSpec) -> str:
    """Load `spec`, then move its tags to a fresh image (as a rebuild does), leaving it `<none>:<none>`.

    The other way to get a dangling image is to load an ImageSpec without tags; both show under
    `docker images -f dangling=true`. Returns the now-dangling image's ID.
    """
    if not spec.tags:
        return load_images(engine, [spec])[0]
    (old_id,) = load_images(engine, [spec])
    successor = ImageSpec(
        tags=spec.tags,
        layers=[Layer.text("successor", f"replaces {spec.image_id}")],
        created=spec.created + timedelta(seconds=1),
        labels=spec.labels,
    )
    load_successors(engine, [successor])
    return old_id


def create_container(engine: PrivateDockerd, image_ref: str, name: str | None = None) -> str:
    """`docker create` (never started) a container on `image_ref`, which pins the image as in use."""
    args = ["create", "--network", "none"]
    if name:
        args += ["--name", name]
    return engine.cli(*args, image_ref).stdout.decode().strip()


# --------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """A named set of images: `images` load together, then `successors` take over some of their tags
    (leaving those dangling, as a rebuild does), then `containers` (name -> image key) are created."""

    images: Mapping[str, ImageSpec]
    successors: Mapping[str, ImageSpec] = field(default_factory=dict)
    containers: Mapping[str, str] = field(default_factory=dict)

    def all_specs(self) -> dict[str, ImageSpec]:
        return {**self.images, **self.successors}


@dataclass(frozen=True)
class LoadedScenario:
    """A scenario as it exists in one engine: IDs per image key and container IDs per name."""

    engine: PrivateDockerd
    scenario: Scenario
    ids: Mapping[str, str]
    containers: Mapping[str, str]

    def spec(self, key: str) -> ImageSpec:
        return self.scenario.all_specs()[key]


def load_scenario(engine: PrivateDockerd, scenario: Scenario) -> LoadedScenario:
    """Put `scenario` into `engine`: one load for the images, one for successors, then the containers."""
    keys = list(scenario.images)
    ids = dict(zip(keys, load_images(engine, [scenario.images[k] for k in keys]), strict=True))
    succ_keys = list(scenario.successors)
    ids.update(zip(succ_keys, load_successors(engine, [scenario.successors[k] for k in succ_keys]), strict=True))
    all_specs = scenario.all_specs()
    containers = {
        # by tag where there is one, so `docker ps` shows what a user would see
        name: create_container(engine, all_specs[key].tags[0] if all_specs[key].tags else ids[key], name=name)
        for name, key in scenario.containers.items()
    }
    return LoadedScenario(engine=engine, scenario=scenario, ids=ids, containers=containers)


KIB = 1024
MIB = 1024 * 1024


def scenario_basic(now: datetime | None = None) -> Scenario:
    """The standard mixed set the metric tests share (sizes chosen so every sum is recognisable).

    - `base_os` (3 MiB) is shared by web, web_old, api, worker and dangling_old; `runtime` (1 MiB) by
      web and web_old: real SharedSize.
    - `web`: one image, three tags (`team/web:1.0`, `:latest`, `:stable`), label app=web, 3 days old.
    - `web_old`: `team/web:0.9`, 21 days old.
    - `api`: `127.0.0.1:5000/ns/api:2.1` (registry host with a port), 10 days old.
    - `worker`: `worker:latest`, 45 days old, used by the stopped container `worker-stopped`.
    - `keep`: `tools/keep:1`, label keep=true, 60 days old, no shared layers.
    - `fresh`: `scratchpad:dev`, created 5 minutes ago.
    - dangling: `dangling_old` (untagged load, 14 days) and `dangling_new` (untagged, 2 days), plus
      `batch_old` which loses `batch:latest` to its successor `batch` (8 days vs 1 day).
    """
    now = now or _now()
    day = timedelta(days=1)
    base_os = Layer.random(3 * MIB, "base-os")
    runtime = Layer.random(1 * MIB, "runtime")
    images = {
        "web": ImageSpec(
            tags=["team/web:1.0", "team/web:latest", "team/web:stable"],
            layers=[base_os, runtime, Layer.random(512 * KIB, "web-1.0")],
            created=now - 3 * day,
            labels={"app": "web"},
        ),
        "web_old": ImageSpec(
            tags=["team/web:0.9"],
            layers=[base_os, runtime, Layer.random(384 * KIB, "web-0.9")],
            created=now - 21 * day,
            labels={"app": "web"},
        ),
        "api": ImageSpec(
            tags=["127.0.0.1:5000/ns/api:2.1"],
            layers=[base_os, Layer.random(640 * KIB, "api-2.1")],
            created=now - 10 * day,
        ),
        "worker": ImageSpec(
            tags=["worker:latest"],
            layers=[base_os, Layer.random(256 * KIB, "worker")],
            created=now - 45 * day,
        ),
        "keep": ImageSpec(
            tags=["tools/keep:1"],
            layers=[Layer.random(768 * KIB, "keep")],
            created=now - 60 * day,
            labels={"keep": "true"},
        ),
        "fresh": ImageSpec(
            tags=["scratchpad:dev"],
            layers=[Layer.random(128 * KIB, "scratchpad")],
            created=now - timedelta(minutes=5),
        ),
        "dangling_old": ImageSpec(
            layers=[base_os, Layer.random(200 * KIB, "dangling-old")],
            created=now - 14 * day,
        ),
        "dangling_new": ImageSpec(layers=[Layer.random(100 * KIB, "dangling-new")], created=now - 2 * day),
        "batch_old": ImageSpec(
            tags=["batch:latest"], layers=[Layer.random(300 * KIB, "batch-old")], created=now - 8 * day
        ),
    }
    successors = {
        "batch": ImageSpec(tags=["batch:latest"], layers=[Layer.random(310 * KIB, "batch-new")], created=now - day),
    }
    return Scenario(images=images, successors=successors, containers={"worker-stopped": "worker"})


def tiny_images(
    count: int,
    *,
    prefix: str = "bulk/img",
    shared: Layer | None = None,
    unique_layers: bool = False,
    now: datetime | None = None,
) -> list[ImageSpec]:
    """`count` distinct tagged images for scale tests (repositories of up to 100 tags each).

    By default they differ only in their config (created time, an `index` label) and share one layer:
    `docker load` extracts each distinct layer in a re-exec'd helper process (~0.15 s each on 2 cores),
    so 1,000 unique layers take minutes while 1,000 configs on one layer take seconds.
    `unique_layers=True` adds a small own layer to each image (real unique sizes, much slower).
    A fixed `now` makes the image IDs reproducible, so a generated set can be cached between runs.
    """
    base = shared if shared is not None else Layer.text("bulk", "shared by every bulk image\n")
    now = now or _now()
    return [
        ImageSpec(
            tags=[f"{prefix}{i // 100}:{i}"],
            layers=[base, Layer.text(f"id-{i}", f"{prefix}:{i}\n")] if unique_layers else [base],
            created=now - timedelta(hours=i),
            labels={"index": str(i)},
        )
        for i in range(count)
    ]
