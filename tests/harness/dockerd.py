"""Private Docker engines for tests: own data root, exec root, socket and containerd, torn down cleanly.

Tests must never reach a user's engine, so everything here is addressed explicitly (`-H unix://<workdir>/…`),
and teardown removes what a killed engine leaves behind (mounts, netns, its containerd), so the next
engine - or a restart on the same directories - starts clean.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import docker

from tests.harness.lifecycle import Managed

#: Linux `sun_path` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

#: A system containerd here would be picked up by dockerd instead of starting its own (moby's
#: `systemContainerdRunning` only lstat()s this path), sharing state with the user's engine.
SYSTEM_CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")

#: Variables that would point a docker client or daemon somewhere else than where we say.
DOCKER_ENV_VARS = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_CONFIG",
    "DOCKER_API_VERSION",
)


class EngineError(RuntimeError):
    """The private engine did not start or stop as asked; the message carries its log tail."""


class CommandError(subprocess.CalledProcessError):
    """A CLI call failed; unlike CalledProcessError its message includes stderr, which is what you need."""

    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace").strip() if isinstance(self.stderr, bytes) else ""
        return f"{super().__str__()}\n{err}"


def short_workdir(prefix: str = "die-") -> Path:
    """A fresh directory directly under /tmp: pytest's tmp_path can push socket paths past 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def remove_workdir(path: Path) -> bool:
    """Delete a workdir unless something is still mounted below it (then deleting could reach into it)."""
    if mounts_under([path]):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the engine's API), for the harness and the benchmarks' raw references."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def unix_http(
    socket_path: Path, method: str, path: str, *, body: bytes | None = None, timeout: float = 60
) -> tuple[int, bytes]:
    """One raw HTTP request over a unix socket: readiness probes and raw API reads, no SDK opinions."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def find_program(name: str, path: str | None = None) -> str | None:
    """`shutil.which` that also looks in the sbin folders a non-login root shell may lack."""
    search = path if path is not None else os.environ.get("PATH", "")
    return shutil.which(name, path=os.pathsep.join([search, "/usr/local/sbin", "/usr/sbin", "/sbin"]))


def isolated_env(bin_dir: Path | None = None) -> dict[str, str]:
    """The environment for engine and CLI processes: no DOCKER_* pointing elsewhere, sbin on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DOCKER_ENV_VARS}
    parts = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p]
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in parts:
            parts.append(extra)
    if bin_dir is not None:
        parts.insert(0, str(bin_dir))
    env["PATH"] = os.pathsep.join(parts)
    return env


# --------------------------------------------------------------------------------------------- mounts/procs


def _mountinfo() -> list[tuple[int, str]]:
    """(mount id, mount point) of every mount in our namespace, in mount order."""
    result: list[tuple[int, str]] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            result.append((int(fields[0]), point))
    return result


def _is_under(point: str, roots: Sequence[Path]) -> bool:
    return any(point == str(r) or point.startswith(str(r) + "/") for r in roots)


def mounts_under(roots: Sequence[Path]) -> list[tuple[int, str]]:
    """Mounts at or below any of `roots` (what a leak check looks at)."""
    return [(mid, p) for mid, p in _mountinfo() if _is_under(p, roots)]


def unmount_new(roots: Sequence[Path], baseline: set[int], attempts: int = 20) -> None:
    """Unmount every mount under `roots` that is not in `baseline`, deepest first; lazily if it stays busy."""
    for attempt in range(attempts):
        leftover = [(mid, p) for mid, p in mounts_under(roots) if mid not in baseline]
        if not leftover:
            return
        # deepest path first; for stacked mounts on one point the newest (highest id) first
        leftover.sort(key=lambda m: (m[1].count("/"), m[0]), reverse=True)
        point = leftover[0][1]
        args = ["umount", point] if attempt < attempts // 2 else ["umount", "-l", point]
        if subprocess.run(args, capture_output=True, check=False).returncode != 0:
            time.sleep(0.05)
    stuck = [p for mid, p in mounts_under(roots) if mid not in baseline]
    if stuck:
        raise EngineError(f"could not unmount {stuck}")


def _proc_state(pid: int) -> str | None:
    """Single-letter state of a process, None when it is gone (zombies report 'Z')."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def processes_referencing(needle: str) -> list[int]:
    """Live processes whose command line mentions `needle` (our containerd and shims name the exec root)."""
    found: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and _proc_state(int(entry)) not in (None, "Z"):
            found.append(int(entry))
    return found


def _argv0(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0", 1)[0].decode(errors="replace"))
    except OSError:
        return ""


def pids_in_cgroups_of(ids: Sequence[str]) -> list[int]:
    """Live processes whose cgroup path names one of `ids` (container IDs): the containers' own processes,
    which a killed shim leaves running and which no command line of ours mentions."""
    if not ids:
        return []
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        if any(cid in text for cid in ids) and _proc_state(int(entry)) not in (None, "Z"):
            found.append(int(entry))
    return found


def remove_cgroups_of(ids: Sequence[str]) -> None:
    """rmdir the (now empty) cgroups a killed shim (or Podman's conmon) left, v1 controllers and v2 alike."""
    root = Path("/sys/fs/cgroup")
    if not ids or not root.is_dir():
        return
    hierarchies = [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]
    for cid in ids:
        for h in hierarchies:
            for cand in (
                h / "docker" / cid,
                h / "system.slice" / f"docker-{cid}.scope",
                h / "libpod_parent" / f"libpod-{cid}",  # Podman with the cgroupfs manager
            ):
                with contextlib.suppress(OSError):
                    cand.rmdir()


def terminate_pids(pids: Sequence[int], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once none of `pids` is alive (zombies count as gone)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        alive = [p for p in pids if _proc_state(p) not in (None, "Z")]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if all(_proc_state(p) in (None, "Z") for p in alive):
                return
            time.sleep(0.02)
    raise EngineError(f"processes {list(pids)} survived SIGKILL")


# --------------------------------------------------------------------------------------------- dockerd


class PrivateDockerd(Managed):
    """One dockerd on its own directories and socket; start/stop/kill/restart as often as a test needs."""

    def __init__(
        self,
        workdir: Path,
        *,
        data_root: Path | None = None,
        bin_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        name: str = "bookworm",
        own_containerd: bool | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.bin_dir = bin_dir
        self.extra_args = tuple(extra_args)
        self.data_root = Path(data_root) if data_root is not None else self.workdir / "data"
        self.exec_root = self.workdir / "exec"
        self.socket = self.workdir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.workdir / "docker.pid"
        self.log_path = self.workdir / "dockerd.log"
        self.config_file = self.workdir / "daemon.json"
        self.cli_config = self.workdir / "cli-config"
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes; use a short workdir")
        # None: run our own containerd only when a system one would otherwise be picked up
        self.own_containerd = own_containerd
        self._proc: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None
        self._baseline_mounts: set[int] | None = None
        self._client: docker.DockerClient | None = None
        self.env = isolated_env(bin_dir)

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _roots(self) -> list[Path]:
        return [self.data_root, self.exec_root]

    def _uses_own_containerd(self) -> bool:
        if self.own_containerd is None:
            return os.path.lexists(SYSTEM_CONTAINERD_SOCKET)
        return self.own_containerd

    def command(self) -> list[str]:
        """The dockerd argv; subclasses (other engines) may extend it."""
        dockerd = find_program("dockerd", self.env["PATH"])
        if dockerd is None:
            raise EngineError("dockerd not found on PATH (install docker.io)")
        args = [
            dockerd,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "-H",
            self.host,
            "--pidfile",
            str(self.pidfile),
            "--config-file",
            str(self.config_file),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ]
        if self._uses_own_containerd():
            args += ["--containerd", str(self._containerd_socket)]
        return [*args, *self.extra_args]

    @property
    def _containerd_socket(self) -> Path:
        return self.exec_root / "ctrd" / "containerd.sock"

    def _start_containerd(self, deadline: float) -> None:
        """Our own containerd (only when a system one exists, which dockerd would otherwise share)."""
        if self._containerd is not None and self._containerd.poll() is None:
            return
        containerd = find_program("containerd", self.env["PATH"])
        if containerd is None:
            raise EngineError("containerd not found on PATH")
        state = self.exec_root / "ctrd"
        state.mkdir(parents=True, exist_ok=True)
        config = state / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.data_root}/containerd/daemon"\n'
            f'state = "{state}/daemon"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self._containerd_socket}"\n'
            f'[ttrpc]\n  address = "{self._containerd_socket}.ttrpc"\n'
            f'[debug]\n  address = "{state}/debug.sock"\n'
        )
        with open(self.workdir / "containerd.log", "ab") as log:
            self._containerd = subprocess.Popen(
                [containerd, "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        while not self._containerd_socket.exists():
            if self._containerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"containerd did not start:\n{self._tail(self.workdir / 'containerd.log')}")
            time.sleep(0.02)

    def start(self, timeout: float = 30) -> None:
        """Spawn dockerd and return once `/_ping` answers; on failure clean up and raise with the log tail."""
        if self.running:
            raise EngineError(f"{self.name} engine already running (pid {self.pid})")
        for d in (self.workdir, self.data_root, self.exec_root, self.cli_config):
            d.mkdir(parents=True, exist_ok=True)
        if self._baseline_mounts is None:
            # taken once, so a restart after kill() still knows which mounts are the engine's leftovers
            self._baseline_mounts = {mid for mid, _ in mounts_under(self._roots())}
        if not self.config_file.exists():
            self.config_file.write_text("{}\n")  # never read /etc/docker/daemon.json
        (self.cli_config / "config.json").write_text("{}\n")
        self._reap_leftovers()
        # After a kill, the supervised containerd can linger as a zombie (a PID 1 that does not reap, as in
        # some VMs/containers); dockerd takes a pid file naming it as "containerd is still running" and then
        # times out connecting to it. Nothing of ours is alive now, so stale pid files can go.
        for stale in (self.pidfile, self.exec_root / "containerd" / "containerd.pid"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        deadline = time.monotonic() + timeout
        if self._uses_own_containerd():
            self._start_containerd(deadline)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== harness: starting {self.name} engine ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise EngineError(f"dockerd ({self.name}) exited with {code}:\n{self.log_tail()}")
            if self.ping():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"dockerd ({self.name}) not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def ping(self) -> bool:
        """True when the engine answers `/_ping` with OK."""
        try:
            status, body = unix_http(self.socket, "GET", "/_ping", timeout=2)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def container_ids(self) -> list[str]:
        """IDs of every container this engine has on disk (running or not); subclasses may override."""
        try:
            return [p.name for p in (self.data_root / "containers").iterdir() if len(p.name) == 64]
        except OSError:
            return []

    def _reap_leftovers(self) -> None:
        """After the engine is gone: kill container processes, shims and containerd, unmount what is left."""
        ids = self.container_ids()
        terminate_pids(pids_in_cgroups_of(ids), timeout=0.5)  # PID 1 in a container may ignore SIGTERM
        terminate_pids(processes_referencing(str(self.exec_root)), timeout=5)
        if self._containerd is not None:
            self._stop_popen(self._containerd, 10)
            self._containerd = None
        unmount_new(self._roots(), self._baseline_mounts or set())
        remove_cgroups_of(ids)

    @staticmethod
    def _stop_popen(proc: subprocess.Popen[bytes], timeout: float) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (SIGKILL after `timeout`), then make sure no process or mount of this engine remains."""
        self._close_client()
        if self._proc is not None:
            self._stop_popen(self._proc, timeout)
            self._proc = None
        if self._baseline_mounts is not None:
            self._reap_leftovers()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def kill(self) -> None:
        """SIGKILL the engine as an outage would; `start()` afterwards reuses the same directories.

        Its supervised containerd dies with it (killed here if it lingers). Shims, running containers and
        mounts stay, as after a real crash, until the next start()/stop() reaps them (containers are not
        resumed by a restart).
        """
        self._close_client()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None
        if self._containerd is None:
            ours = processes_referencing(str(self.exec_root))
            terminate_pids([p for p in ours if _argv0(p) == "containerd"], timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def __repr__(self) -> str:
        return f"PrivateDockerd({self.name!r}, host={self.host!r}, running={self.running})"

    # -- talking to it ---------------------------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        """An SDK client for this engine (explicit base_url, never from_env); cached until stop()/kill()."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, version="auto", timeout=120)
        return self._client

    def cli(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this engine only (`-H`, isolated DOCKER_CONFIG, no hints)."""
        docker_bin = find_program("docker", self.env["PATH"])
        if docker_bin is None:
            raise EngineError("docker CLI not found on PATH")
        env = dict(self.env, DOCKER_CONFIG=str(self.cli_config), DOCKER_CLI_HINTS="false")
        proc = subprocess.run(
            [docker_bin, "-H", self.host, *args],
            input=input,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        """Raw engine API call returning decoded JSON: what the engine itself says, for comparing metrics."""
        data = json.dumps(body).encode() if body is not None else None
        status, raw = unix_http(self.socket, method, path, body=data, timeout=timeout)
        if status >= 400:
            raise EngineError(f"{method} {path} -> {status}: {raw.decode(errors='replace')}")
        return json.loads(raw) if raw.strip() else None

    def get_json(self, path: str, timeout: float = 120) -> Any:
        """`GET path` on the engine API (unversioned: the engine's own current API shape)."""
        return self.api("GET", path, timeout=timeout)

    def version(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get_json("/version")
        return data

    def api_version(self) -> str:
        """The engine's API version (e.g. '1.41'), which decides payload shapes."""
        return str(self.version()["ApiVersion"])

    # -- diagnostics ----------------------------------------------------------------------------------------

    @staticmethod
    def _tail(path: Path, lines: int = 40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 40) -> str:
        return self._tail(self.log_path, lines)

    def leftovers(self) -> tuple[list[str], list[int]]:
        """(mounts, live processes incl. container processes) of this engine now: both empty after stop()."""
        baseline = self._baseline_mounts or set()
        mounts = [p for mid, p in mounts_under(self._roots()) if mid not in baseline]
        procs = processes_referencing(str(self.exec_root)) + pids_in_cgroups_of(self.container_ids())
        return mounts, sorted(set(procs))


# --------------------------------------------------------------------------------------------- loop fs


class LoopFilesystem:
    """A small ext4 on a loop device: a data root that really fills up, for disk-pressure tests.

    Made with `-m 0` (no root reserve) so statvfs avail equals free space and predictions are simple.
    """

    def __init__(self, workdir: Path, size_mb: int) -> None:
        self.workdir = Path(workdir)
        self.size_mb = size_mb
        self.image = self.workdir / "fs.img"
        self.mountpoint = self.workdir / "mnt"
        self.mounted = False

    def __enter__(self) -> LoopFilesystem:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        try:
            with open(self.image, "wb") as f:
                f.truncate(self.size_mb * 1024 * 1024)
            self._run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0", str(self.image))
            self._run("mount", "-o", "loop", str(self.image), str(self.mountpoint))
            self.mounted = True
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    @staticmethod
    def _run(*args: str) -> None:
        prog = find_program(args[0]) or args[0]
        proc = subprocess.run([prog, *args[1:]], capture_output=True, check=False)
        if proc.returncode != 0:
            raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)

    def loop_devices(self) -> list[str]:
        """Loop devices backed by our image file (empty once cleaned up)."""
        proc = subprocess.run(["losetup", "-j", str(self.image)], capture_output=True, check=False)
        return [line.split(":", 1)[0] for line in proc.stdout.decode().splitlines() if ":" in line]

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.mountpoint)

    def avail_bytes(self) -> int:
        st = self.statvfs()
        return st.f_bavail * st.f_frsize

    def size_bytes(self) -> int:
        st = self.statvfs()
        return st.f_blocks * st.f_frsize

    def cleanup(self) -> None:
        """Unmount (retrying, then lazily), detach the loop device, delete the image; safe to call twice."""
        for attempt in range(50):
            if not any(p == str(self.mountpoint) for _, p in _mountinfo()):
                break
            # anything a crashed engine left below the mount point would keep it busy
            with contextlib.suppress(EngineError):
                unmount_new([self.mountpoint], {mid for mid, p in _mountinfo() if p == str(self.mountpoint)})
            args = ["umount", str(self.mountpoint)] if attempt < 40 else ["umount", "-l", str(self.mountpoint)]
            if subprocess.run(args, capture_output=True, check=False).returncode != 0:
                time.sleep(0.1)
        self.mounted = False
        if self.image.exists():
            for dev in self.loop_devices():
                subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
            self.image.unlink()


@contextlib.contextmanager
def running_engine(workdir: Path, **kwargs: Any) -> Iterator[PrivateDockerd]:
    """`with running_engine(dir) as engine:` for scripts (benchmarks) that are not pytest."""
    engine = PrivateDockerd(workdir, **kwargs)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
