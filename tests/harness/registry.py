"""A private registry (Debian's `docker-registry`, distribution v2) on loopback: real RepoDigests.

dockerd treats 127.0.0.0/8 registries as insecure by default, so plain HTTP push and pull need no setup.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.harness.dockerd import EngineError, find_program, free_port, isolated_env
from tests.harness.lifecycle import Managed


class PrivateRegistry(Managed):
    """`docker-registry serve` with filesystem storage under `workdir` on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.storage = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def ref(self, name: str) -> str:
        """`127.0.0.1:<port>/<name>`: a reference that pushes to this registry."""
        return f"{self.address}/{name}"

    def _config(self) -> dict[str, object]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.address, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }

    def start(self, timeout: float = 20) -> None:
        """Start and wait until `GET /v2/` answers 200."""
        program = find_program("docker-registry")
        if program is None:
            raise EngineError("docker-registry not found (install Debian's docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self._config()))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [program, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=isolated_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise EngineError(f"registry exited with {self._proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"registry not ready after {timeout}s:\n{self._log_tail()}")
            time.sleep(0.05)

    def manifest_digest(self, name: str, tag: str) -> str:
        """The digest the registry serves for `name:tag` (`Docker-Content-Digest` of its manifest)."""
        accept = ", ".join(
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.index.v1+json",
            )
        )
        req = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{tag}", method="HEAD", headers={"Accept": accept}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.headers["Docker-Content-Digest"])

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None
