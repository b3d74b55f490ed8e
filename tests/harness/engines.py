"""Engine kinds for the compatibility matrix: which dockerd (or Podman) a test runs against.

Users run Docker 20.10 through 28 (29 soon), with the classic or the containerd image store, and Podman's
Docker-compatible socket. This module turns an engine *name* into something the harness can start:

- ``bookworm``: the system's dockerd 20.10 (API 1.41), classic store.
- ``trixie`` / ``trixie-containerd``: Debian trixie's docker.io 26.1 (API 1.45), classic / containerd store.
- ``sid`` / ``sid-containerd``: Debian sid's docker.io 28.5 (API 1.51), classic / containerd store.
- ``podman``: Debian bookworm's podman 4.3 ``system service`` (claims API 1.41).

Newer dockerds are fetched from Debian's archive with a private apt configuration (the system's apt
sources, lists and dpkg state stay untouched), unpacked with ``dpkg -x`` into a cache folder and run with
bookworm's runc: the newer runc needs a newer glibc than bookworm has. See ``docs/engines.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.harness.dockerd import PrivateDockerd

DEFAULT_CACHE_DIR = Path(os.environ.get("DIE_ENGINE_CACHE", "/var/cache/docker-image-exporter-engines"))
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SYSTEM_RUNC = Path("/usr/sbin/runc")
# Bumped when the layout of a cached extract changes, so old caches are rebuilt instead of misread.
CACHE_FORMAT = 1


class EngineUnavailable(RuntimeError):
    """An engine cannot be prepared here (no root, no network, package gone from sid, ...).

    Its message names the engine, so a matrix run says which column is missing and why.
    """


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start one engine kind; ``bin_dir`` goes first on the engine's PATH."""

    name: str
    kind: Literal["dockerd", "podman"]
    bin_dir: Path | None
    extra_args: tuple[str, ...]
    containerd_store: bool
    description: str


@dataclass(frozen=True)
class _Recipe:
    kind: Literal["dockerd", "podman"]
    suite: str | None  # Debian suite to fetch docker.io/containerd from; None = use the system's
    containerd_store: bool
    summary: str
    feature_flag: bool = True  # dockerd understands `--feature` (27+); older ones read it from a config file


_CONTAINERD_STORE_ARGS = ("--feature", "containerd-snapshotter=true")

RECIPES: dict[str, _Recipe] = {
    "bookworm": _Recipe("dockerd", None, False, "Debian bookworm docker.io 20.10 (API 1.41), classic store"),
    "trixie": _Recipe("dockerd", "trixie", False, "Debian trixie docker.io 26.1 (API 1.45), classic store"),
    "trixie-containerd": _Recipe(
        "dockerd", "trixie", True, "Debian trixie docker.io 26.1 (API 1.45), containerd image store", False
    ),
    "sid": _Recipe("dockerd", "sid", False, "Debian sid docker.io 28.5 (API 1.51), classic store"),
    "sid-containerd": _Recipe("dockerd", "sid", True, "Debian sid docker.io 28.5 (API 1.51), containerd image store"),
    "podman": _Recipe("podman", None, False, "Debian bookworm podman 4.3 system service (claims API 1.41)"),
}
ENGINE_NAMES: tuple[str, ...] = tuple(RECIPES)

# Files a dockerd needs from the fetched packages, with the places Debian has put them over the years.
_BINARIES: dict[str, tuple[str, ...]] = {
    "dockerd": ("usr/sbin/dockerd", "usr/bin/dockerd"),
    "docker-proxy": ("usr/sbin/docker-proxy", "usr/bin/docker-proxy", "usr/libexec/docker/docker-proxy"),
    "containerd": ("usr/bin/containerd", "usr/sbin/containerd"),
    "containerd-shim-runc-v2": ("usr/bin/containerd-shim-runc-v2", "usr/sbin/containerd-shim-runc-v2"),
}
# docker-init links to the tini package's binary, which we do not fetch; bookworm's serves (only `--init`).
_OPTIONAL_BINARIES: dict[str, tuple[str, ...]] = {}


def engine_name_from_env() -> str:
    """The engine the harness fixtures should start: ``DIE_ENGINE``, default ``bookworm``."""
    name = os.environ.get("DIE_ENGINE", "").strip() or "bookworm"
    if name not in RECIPES:
        raise EngineUnavailable(f"DIE_ENGINE={name!r} is not one of {', '.join(ENGINE_NAMES)}")
    return name


def prepare_engine(name: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> EngineSpec:
    """Make engine ``name`` runnable here and describe how to start it.

    Fetching happens once per Debian suite (``trixie`` and ``trixie-containerd`` share one extract); later
    calls only check the cache. Safe to call from several processes at once (a lock file per suite).
    """
    recipe = RECIPES.get(name)
    if recipe is None:
        raise EngineUnavailable(f"unknown engine {name!r}; known: {', '.join(ENGINE_NAMES)}")
    extra: tuple[str, ...] = _CONTAINERD_STORE_ARGS if recipe.containerd_store else ()
    if recipe.kind == "podman":
        version = _ensure_podman(name)
        return EngineSpec(name, "podman", None, (), False, f"{recipe.summary}; podman {version}")
    if recipe.suite is None:
        dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None)
        if dockerd is None:
            raise EngineUnavailable(f"engine {name}: no dockerd installed (apt-get install docker.io)")
        version = _first_line([dockerd, "--version"])
        return EngineSpec(name, "dockerd", None, extra, recipe.containerd_store, f"{recipe.summary}; {version}")
    manifest = _ensure_suite(name, recipe.suite, cache_dir)
    if recipe.containerd_store and not recipe.feature_flag:
        extra = ("--config-file", str(_containerd_store_config(cache_dir / recipe.suite)))
    versions = ", ".join(f"{pkg} {ver}" for pkg, ver in sorted(manifest["packages"].items()))
    return EngineSpec(
        name=name,
        kind="dockerd",
        bin_dir=Path(manifest["bin_dir"]),
        extra_args=extra,
        containerd_store=recipe.containerd_store,
        description=f"{recipe.summary}; {versions}; runc {manifest['runc']} (bookworm)",
    )


def suite_manifest(suite: str, cache_dir: Path = DEFAULT_CACHE_DIR) -> dict[str, Any] | None:
    """What a cached suite extract holds (package versions, fetch time), or None if not fetched yet."""
    path = cache_dir / suite / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("format") == CACHE_FORMAT else None


def make_engine(
    spec: EngineSpec, workdir: Path, *, data_root: Path | None = None, name: str | None = None
) -> PrivateDockerd | PodmanService:
    """An engine of kind ``spec`` on ``workdir``, configured but not started (fixtures start/stop it)."""
    if spec.kind == "podman":
        return PodmanService(workdir, data_root=data_root, name=name or spec.name)
    return PrivateDockerd(
        workdir, data_root=data_root, bin_dir=spec.bin_dir, extra_args=spec.extra_args, name=name or spec.name
    )


def _containerd_store_config(suite_dir: Path) -> Path:
    """A daemon.json that only enables the containerd image store, for dockerds without ``--feature`` (< 27).

    Passed as a second ``--config-file`` after PrivateDockerd's own (the last one wins), so the spec alone
    selects the store, however a fixture builds the engine. That engine ignores the workdir's daemon.json.
    """
    path = suite_dir / "containerd-store.json"
    content = json.dumps({"features": {"containerd-snapshotter": True}}) + "\n"
    if not path.exists() or path.read_text() != content:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(content)
        os.replace(tmp, path)
    return path


def start_engine(spec: EngineSpec, workdir: Path, *, start_timeout: float = 60.0) -> PrivateDockerd | PodmanService:
    """Start a private instance of ``spec`` whose state lives under ``workdir``; the caller stops it."""
    engine = make_engine(spec, workdir)
    engine.start(timeout=start_timeout)
    return engine


StoreKind = Literal["classic", "containerd", "podman"]


def engine_store(engine: PrivateDockerd) -> StoreKind:
    """Which image store a running engine uses, from its own ``/version`` and ``/info`` answers.

    Tests use it to pick the documented semantics (docs/engines.md): what ``Id`` means, what ``Size``
    and ``SharedSize`` count. The values they compare are still read from that engine's API.
    """
    version = engine.get_json("/version")
    components = version.get("Components") or []
    if any("podman" in str(c.get("Name", "")).lower() for c in components):
        return "podman"
    info = engine.get_json("/info")
    status = {str(row[0]): str(row[-1]) for row in (info.get("DriverStatus") or []) if row}
    return "containerd" if status.get("driver-type") == "io.containerd.snapshotter.v1" else "classic"


def check_engine(spec: EngineSpec, engine: PrivateDockerd) -> str:
    """Confirm a started engine is what ``spec`` promises (store kind); returns its API version.

    A containerd-store column that silently ran the classic store would pass tests it should fail.
    """
    store = engine_store(engine)
    on_containerd = store == "containerd"
    if spec.kind == "podman" and store != "podman":
        raise EngineUnavailable(f"engine {spec.name}: expected Podman, /version says {engine.version().get('Version')}")
    if spec.kind == "dockerd" and on_containerd != spec.containerd_store:
        info = engine.get_json("/info")
        want = "containerd" if spec.containerd_store else "classic"
        raise EngineUnavailable(f"engine {spec.name}: expected the {want} image store, /info says {info.get('Driver')}")
    return engine.api_version()


# --- fetching newer dockerds from Debian's archive -------------------------------------------------------


def _ensure_suite(name: str, suite: str, cache_dir: Path) -> dict[str, Any]:
    manifest = suite_manifest(suite, cache_dir)
    if manifest is not None and _bin_dir_ok(Path(manifest["bin_dir"])):
        return manifest
    if os.geteuid() != 0:
        raise EngineUnavailable(f"engine {name}: fetching Debian {suite}'s docker.io needs root")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineUnavailable(f"engine {name}: cannot create cache dir {cache_dir}: {exc}") from exc
    with _locked(cache_dir / f".{suite}.lock"):
        manifest = suite_manifest(suite, cache_dir)  # another process may have finished meanwhile
        if manifest is not None and _bin_dir_ok(Path(manifest["bin_dir"])):
            return manifest
        return _fetch_suite(name, suite, cache_dir)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _bin_dir_ok(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / tool, os.X_OK) for tool in (*_BINARIES, "runc"))


def _fetch_suite(name: str, suite: str, cache_dir: Path) -> dict[str, Any]:
    """Download docker.io + containerd of ``suite``, unpack them, and build the bin folder, atomically."""
    final = cache_dir / suite
    work = Path(tempfile.mkdtemp(prefix=f".{suite}-", dir=cache_dir))
    try:
        apt_dir = work / "apt"
        for sub in ("sources", "lists/partial", "cache/archives/partial", "preferences", "debs"):
            (apt_dir / sub).mkdir(parents=True)
        mirror = debian_mirror()
        (apt_dir / "sources" / f"{suite}.sources").write_text(
            f"Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {DEBIAN_KEYRING}\n"
        )
        options = _apt_options(apt_dir)
        _run_apt(name, ["apt-get", "-q", *options, "update"], cwd=apt_dir)
        _run_apt(name, ["apt-get", "-q", *options, "download", "docker.io", "containerd"], cwd=apt_dir / "debs")
        debs = sorted((apt_dir / "debs").glob("*.deb"))
        packages: dict[str, str] = {}
        root = work / "root"
        root.mkdir()
        for deb in debs:
            fields = _output(["dpkg-deb", "-f", str(deb), "Package", "Version"])
            parsed = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
            packages[parsed["Package"]] = parsed["Version"]
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, capture_output=True)
        if set(packages) != {"docker.io", "containerd"}:
            raise EngineUnavailable(f"engine {name}: Debian {suite} did not provide docker.io and containerd")
        stray_runc = [p for p in root.rglob("runc") if p.is_file()]
        if stray_runc:  # never let dockerd find a runc built for a newer glibc
            for path in stray_runc:
                path.unlink()
        bin_dir = work / "bin"
        bin_dir.mkdir()
        for tool, candidates in (_BINARIES | _OPTIONAL_BINARIES).items():
            target = _find_executable(root, candidates)
            if target is None:
                if tool in _BINARIES:
                    raise EngineUnavailable(f"engine {name}: Debian {suite}'s packages have no {tool}")
                continue
            # Relative links keep the cache relocatable once renamed into place.
            (bin_dir / tool).symlink_to(os.path.relpath(target.resolve(), bin_dir))
        if not os.access(SYSTEM_RUNC, os.X_OK):
            raise EngineUnavailable(f"engine {name}: bookworm's {SYSTEM_RUNC} is missing (apt-get install runc)")
        (bin_dir / "runc").symlink_to(SYSTEM_RUNC)
        # Running each once proves it works with this system's glibc before anything depends on it.
        checks = {
            tool: _first_line([str(bin_dir / tool), flag], engine=name, whole=True)
            for tool, flag in (
                ("dockerd", "--version"),
                ("containerd", "--version"),
                ("containerd-shim-runc-v2", "-v"),
            )
        }
        shutil.rmtree(apt_dir, ignore_errors=True)  # ~70 MB of lists and .debs; the manifest keeps versions
        manifest = {
            "format": CACHE_FORMAT,
            "suite": suite,
            "mirror": mirror,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "packages": packages,
            "versions": checks,
            "runc": _first_line([str(SYSTEM_RUNC), "--version"]).split()[-1],
            "bin_dir": str(final / "bin"),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _apt_options(apt_dir: Path) -> list[str]:
    """apt options that touch only ``apt_dir``: the system's sources, lists and state stay as they are.

    ``/etc/apt/apt.conf.d`` still applies on purpose (proxies, mirrors' transport settings).
    """
    pairs = {
        "Dir::Etc::SourceList": "/dev/null",
        "Dir::Etc::SourceParts": apt_dir / "sources",
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": apt_dir / "preferences",
        "Dir::State::Lists": apt_dir / "lists",
        "Dir::State::status": "/dev/null",
        "Dir::Cache": apt_dir / "cache",
        "Acquire::Languages": "none",
        # The private folders belong to root; apt's _apt sandbox user could not write into them.
        "APT::Sandbox::User": "root",
    }
    return [arg for key, value in pairs.items() for arg in ("-o", f"{key}={value}")]


def _run_apt(name: str, argv: Sequence[str], *, cwd: Path) -> None:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"engine {name}: {' '.join(argv[:2])} … {argv[-1]} failed: {exc}") from exc
    # apt-get update exits 0 on some fetch failures and only warns: treat "W:/E:" about our source as fatal.
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W: Failed", "Err:"))]
    problems += [line for line in proc.stdout.splitlines() if line.startswith("Err:")]
    if proc.returncode != 0 or problems:
        detail = "\n".join(problems) or proc.stderr.strip()[-2000:]
        raise EngineUnavailable(f"engine {name}: `apt-get {argv[-1]}` failed (exit {proc.returncode}):\n{detail}")


def debian_mirror() -> str:
    """The Debian archive URI this machine's apt already uses (``DIE_DEBIAN_MIRROR`` overrides)."""
    override = os.environ.get("DIE_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    codename = _os_codename()
    for uri, suites in _system_apt_entries():
        if codename in suites and not uri.rstrip("/").endswith("-security"):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _os_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
    return match.group(1) if match else "bookworm"


def _system_apt_entries() -> Iterator[tuple[str, set[str]]]:
    """(URI, suites) of every enabled source in one-line and deb822 files, system order."""
    paths = [Path("/etc/apt/sources.list")]
    parts = Path("/etc/apt/sources.list.d")
    if parts.is_dir():
        paths += sorted(parts.iterdir())
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    yield uri, set(fields.get("suites", "").split())
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], {words[2]}


def _find_executable(root: Path, candidates: Sequence[str]) -> Path | None:
    for rel in candidates:
        path = root / rel
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _output(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=60).stdout


def _first_line(argv: Sequence[str], *, engine: str | None = None, whole: bool = False) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise EngineUnavailable(f"engine {engine}: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        # Typically "GLIBC_2.38 not found": the binary needs a newer libc than this system's.
        raise EngineUnavailable(f"engine {engine}: {argv[0]} does not run here: {proc.stderr.strip()[:500]}")
    if whole:
        return " ".join(proc.stdout.split())[:300]
    return (proc.stdout.strip().splitlines() or [""])[0]


# --- Podman -----------------------------------------------------------------------------------------------


def _ensure_podman(name: str) -> str:
    """Podman from bookworm's own archive: installed via apt only when missing and only as root."""
    if shutil.which("podman") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise EngineUnavailable(f"engine {name}: podman is not installed (as root: apt-get install podman)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with _locked(Path("/tmp/.docker-image-exporter-podman-install.lock")):
            if shutil.which("podman") is None:
                install = ["apt-get", "install", "-y", "-q", "podman"]
                proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
                if proc.returncode != 0:  # a fresh machine has no package lists yet
                    subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=900)
                    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
                if proc.returncode != 0:
                    raise EngineUnavailable(f"engine {name}: apt-get install podman failed: {proc.stderr[-1500:]}")
    return _first_line(["podman", "--version"], engine=name).split()[-1]


class PodmanService(PrivateDockerd):
    """A private ``podman system service`` speaking the Docker API on its own socket.

    A PrivateDockerd in every respect a test sees (socket, host, start/stop/kill, client(), cli(),
    api_version(), leftovers()), so fixtures hand out either. All state - storage, run root, file
    locks, events log, network configs - lives under ``workdir``; the system's ``/var/lib/containers``
    and ``/run/containers`` are never touched.
    """

    def __init__(self, workdir: Path, *, data_root: Path | None = None, name: str = "podman") -> None:
        storage = data_root if data_root is not None else Path(workdir) / "storage"
        super().__init__(workdir, data_root=storage, name=name, own_containerd=False)
        self.insecure_registries: list[str] = []
        # PrivateDockerd's exec root doubles as podman's run root: leftovers are found and reaped there.
        self.tmp_dir = self.workdir / "tmp"
        self.env.update(
            CONTAINERS_CONF=str(self.workdir / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.workdir / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(self.workdir / "registries.conf"),
            TMPDIR=str(self.tmp_dir),
            # The docker CLI builds with BuildKit over gRPC, which Podman's API lacks ("unable to upgrade
            # to h2c"); the classic builder endpoint works.
            DOCKER_BUILDKIT="0",
        )

    def _roots(self) -> list[Path]:
        return [self.data_root, self.exec_root, self.tmp_dir]

    def container_ids(self) -> list[str]:
        """Containers in this instance's storage (``overlay-containers/<id>``), for reaping and leak checks."""
        try:
            return [p.name for p in (self.data_root / "overlay-containers").iterdir() if len(p.name) == 64]
        except OSError:
            return []

    def _write_config(self) -> None:
        for path in (self.data_root, self.exec_root, self.tmp_dir, self.workdir / "networks"):
            path.mkdir(parents=True, exist_ok=True)
        # podman itself drops to nproc 32768 when it cannot raise it: a container may not ask for more.
        nofile, nproc = _hard_limit(resource.RLIMIT_NOFILE), min(_hard_limit(resource.RLIMIT_NPROC), 32768)
        (self.workdir / "containers.conf").write_text(
            "[containers]\n"
            'netns = "none"\n'  # no bridge or iptables for test containers
            # Rootful podman asks for nofile and nproc 1048576; without CAP_SYS_RESOURCE (sandboxes, some CI)
            # runc then fails with "error setting rlimit type 7/6". Our own hard limits are always allowed.
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'  # no systemd on the test machine
            'events_logger = "file"\n'  # no journald either
            f'events_logfile_path = "{self.workdir / "events.log"}"\n'
            # File locks under tmp_dir instead of the machine-wide /dev/shm/libpod_lock, which every other
            # root podman shares (and frees wholesale when it starts after a reboot).
            'lock_type = "file"\n'
            f'tmp_dir = "{self.tmp_dir}"\n'
            # uploads for `docker load` land here instead of the system's /var/tmp
            f'image_copy_tmp_dir = "{self.tmp_dir}"\n'
            f'static_dir = "{self.data_root / "libpod"}"\n'
            f'volume_path = "{self.data_root / "volumes"}"\n'
            "[network]\n"
            f'network_config_dir = "{self.workdir / "networks"}"\n'
        )
        (self.workdir / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.data_root}"\nrunroot = "{self.exec_root}"\n'
        )
        # No unqualified-search registries: a short name never turns into a network pull.
        (self.workdir / "registries.conf").write_text(
            "unqualified-search-registries = []\n"
            + "".join(f'[[registry]]\nlocation = "{r}"\ninsecure = true\n' for r in self.insecure_registries)
        )

    def add_insecure_registry(self, address: str) -> None:
        """Allow plain HTTP to ``address`` (``host:port``), as dockerd does for 127.0.0.0/8 by default.

        Podman reads registries.conf once per process, so a running service is restarted to pick it up.
        """
        self.insecure_registries.append(address)
        if self.running:
            self.stop()
            self.start()

    def podman_argv(self) -> list[str]:
        """The podman CLI bound to this instance's storage (for set-up that bypasses the API)."""
        program = shutil.which("podman", path=self.env["PATH"]) or "podman"
        return [
            program,
            "--root",
            str(self.data_root),
            "--runroot",
            str(self.exec_root),
            "--tmpdir",
            str(self.tmp_dir),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]

    def command(self) -> list[str]:
        return [*self.podman_argv(), "system", "service", "--time=0", self.host]

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # podman refuses to bind over a stale socket
        super().start(timeout)

    def kill(self) -> None:
        """SIGKILL the service only: like a crashed API service, containers' conmons live on."""
        self._close_client()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None

    def __repr__(self) -> str:
        return f"PodmanService({self.name!r}, host={self.host!r}, running={self.running})"


def _hard_limit(kind: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return 1048576 if hard == resource.RLIM_INFINITY else hard
