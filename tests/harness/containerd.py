"""A private containerd with its CRI plugin, for the CRI backend's tests: own root, state and socket.

Debian's containerd ships the CRI plugin. It starts standalone in about a second with the `native`
snapshotter (no overlay mounts to clean up) and no CNI (RuntimeReady true, NetworkReady false: no pod can
start, which the tests never need). Images come from the same generated tars the Docker tests load, imported
with `ctr -n k8s.io images import` (the CRI's namespace). Everything is addressed by its own socket under a
fresh /tmp directory: the system's `/run/containerd/containerd.sock` is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.harness.dockerd import find_program, remove_workdir, short_workdir
from tests.harness.images import ImageSpec, write_save_tar
from tests.harness.lifecycle import Managed

#: The namespace the CRI plugin keeps its images in.
CRI_NAMESPACE = "k8s.io"
#: The sandbox image the private containerd is configured with (never pulled: no pod starts here).
SANDBOX_IMAGE = "registry.k8s.io/pause:3.6"


class ContainerdError(RuntimeError):
    pass


def containerd_bin_dir(suite: str | None = None) -> Path | None:
    """Where `containerd` and `ctr` come from: `trixie` takes Debian trixie's containerd 1.7 from the engine
    matrix's cache (fetched like its dockerd); `bookworm`, the system's (PATH).

    `suite` None reads `DIE_CRI_ENGINE` (unset: bookworm), as a test process started for one leg does; the
    matrix, which runs legs in parallel threads of one process, passes each leg's suite instead.
    """
    name = (os.environ.get("DIE_CRI_ENGINE", "") if suite is None else suite).strip() or "bookworm"
    if name == "bookworm":
        return None
    if name != "trixie":  # containerd 2.x (sid) reads another config format
        raise ContainerdError(f"DIE_CRI_ENGINE={name}: only bookworm (1.6) and trixie (1.7) are known")
    from tests.harness.engines import prepare_engine

    bin_dir = prepare_engine("trixie").bin_dir
    assert bin_dir is not None
    return bin_dir.parent / "root" / "usr" / "bin"  # the extracted package: containerd and ctr side by side


def containerd_version(bin_dir: Path | None) -> str:
    """`containerd --version`'s version field (`1.6.20~ds1`) of the containerd in `bin_dir` (None: PATH)."""
    program = find_program("containerd", None if bin_dir is None else str(bin_dir))
    if program is None:
        raise ContainerdError("containerd not installed (apt-get install containerd)")
    out = subprocess.run([program, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    return out.split()[2]


class PrivateContainerd(Managed):
    """`containerd --config <workdir>/config.toml`, its gRPC socket at `<workdir>/c.sock`."""

    def __init__(
        self, workdir: Path | None = None, sandbox_image: str = SANDBOX_IMAGE, plain_http: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir or short_workdir("die-ctd-")
        self.sandbox_image = sandbox_image
        #: registries (`127.0.0.1:port`) the CRI pulls from over plain HTTP (the tests' private registry)
        self.plain_http = tuple(plain_http)
        self.socket = self.workdir / "c.sock"
        self.log_path = self.workdir / "containerd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.bin_dir = containerd_bin_dir()

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def image_fs(self) -> Path:
        """The native snapshotter's directory: what `ImageFsInfo` names as the image filesystem."""
        return self.workdir / "root" / "io.containerd.snapshotter.v1.native"

    def _config(self) -> str:
        w = self.workdir
        return (
            "version = 2\n"
            f'root = "{w}/root"\n'
            f'state = "{w}/state"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n'
            '[metrics]\n  address = ""\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n'
            f'  sandbox_image = "{self.sandbox_image}"\n'
            '  [plugins."io.containerd.grpc.v1.cri".containerd]\n'
            '    snapshotter = "native"\n'
            '  [plugins."io.containerd.grpc.v1.cri".cni]\n'
            f'    bin_dir = "{w}/cni-bin"\n'
            f'    conf_dir = "{w}/cni-conf"\n'
            + "".join(
                f'  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]\n    endpoint = ["http://{host}"]\n'
                for host in self.plain_http
            )
        )

    def start(self, timeout: float = 30) -> PrivateContainerd:
        program = find_program("containerd", None if self.bin_dir is None else str(self.bin_dir))
        if program is None:
            raise ContainerdError("containerd not installed (apt-get install containerd)")
        config = self.workdir / "config.toml"
        config.write_text(self._config())
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [program, "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ContainerdError(f"containerd did not start:\n{self.log_tail()}")
            if self.socket.exists() and self._ctr_ok("version"):
                return self
            time.sleep(0.05)

    def version(self) -> str:
        """`containerd --version`'s version field (`1.6.20~ds1`) of the binary this harness runs."""
        return containerd_version(self.bin_dir)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _ctr_ok(self, *args: str) -> bool:
        return subprocess.run(self._ctr_argv(*args), capture_output=True, timeout=30, check=False).returncode == 0

    def _ctr_argv(self, *args: str) -> list[str]:
        program = find_program("ctr", None if self.bin_dir is None else str(self.bin_dir))
        if program is None:
            raise ContainerdError("ctr not installed (apt-get install containerd)")
        return [program, "--address", str(self.socket), "--namespace", CRI_NAMESPACE, *args]

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """`ctr -n k8s.io <args>` against this containerd; its stdout."""
        proc = subprocess.run(self._ctr_argv(*args), capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def load(self, specs: Sequence[ImageSpec]) -> list[str]:
        """Import generated images (the Docker tests' own tars) into the CRI's namespace; their IDs."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            tar = write_save_tar(specs, Path(tmp) / "images.tar")
            self.ctr("images", "import", str(tar))
        return [spec.image_id for spec in specs]

    def refs(self) -> list[str]:
        """`ctr images ls --quiet`: every reference containerd holds in the CRI namespace (IDs included)."""
        return sorted(self.ctr("images", "ls", "--quiet").split())

    def stop(self, timeout: float = 20) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout)
            self._proc = None

    def remove(self) -> None:
        """Stop and delete the workdir (the native snapshotter mounts nothing)."""
        self.stop()
        remove_workdir(self.workdir)
