"""A private registry (Debian's `docker-registry`, distribution v2) on loopback: real RepoDigests.

dockerd treats 127.0.0.0/8 registries as insecure by default, so plain HTTP push and pull need no setup;
Podman needs the address in its registries.conf, which the `dockerd` fixture writes when a test also uses `registry`.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import yaml

from tests.harness.dockerd import EngineError, find_program, isolated_env
from tests.harness.lifecycle import Managed
from tests.harness.ports import free_port, listener_owned_by


class PrivateRegistry(Managed):
    """`docker-registry serve` with filesystem storage under `workdir` on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path, port: int | None = None, users: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        #: With users (name -> password), the registry asks for them (htpasswd, HTTP basic auth).
        self.users = dict(users or {})
        self.htpasswd_path = self.workdir / "htpasswd"
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
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.address, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.users:
            config["auth"] = {"htpasswd": {"realm": "die-test", "path": str(self.htpasswd_path)}}
        return config

    def _write_htpasswd(self) -> None:
        """bcrypt entries, the only hash distribution's htpasswd accepts (glibc's libcrypt makes them)."""
        lines = [f"{u}:{bcrypt_hash(p)}" for u, p in self.users.items()]
        self.htpasswd_path.write_text("\n".join(lines) + "\n")

    def _authorization(self) -> dict[str, str]:
        if not self.users:
            return {}
        user, password = next(iter(self.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def put_image(self, name: str, tag: str) -> str:
        """Upload a minimal image (a config blob, no layers) as `name:tag` over the registry API; its
        manifest digest. For tests of the registry itself, without an engine."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                             "created": f"2026-01-01T00:00:{time.time_ns() % 60:02d}Z", "die": time.time_ns()}).encode()  # fmt: skip
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        base = f"http://{self.address}/v2/{name}"
        auth = self._authorization()
        start = urllib.request.Request(f"{base}/blobs/uploads/", data=b"", method="POST", headers=auth)
        with urllib.request.urlopen(start, timeout=10) as resp:
            location = urllib.parse.urljoin(f"http://{self.address}/", str(resp.headers["Location"]))
        sep = "&" if "?" in location else "?"
        upload = urllib.request.Request(f"{location}{sep}digest={config_digest}", data=config, method="PUT",
                                        headers={**auth, "Content-Type": "application/octet-stream"})  # fmt: skip
        with urllib.request.urlopen(upload, timeout=10) as resp:
            assert resp.status == 201, resp.status
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": config_digest},
            "layers": [],
        }).encode()  # fmt: skip
        put = urllib.request.Request(f"{base}/manifests/{tag}", data=manifest, method="PUT",
                                     headers={**auth, "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})  # fmt: skip
        with urllib.request.urlopen(put, timeout=10) as resp:
            return str(resp.headers["Docker-Content-Digest"])

    def start(self, timeout: float = 20) -> None:
        """Start and wait until `GET /v2/` answers 200."""
        program = find_program("docker-registry")
        if program is None:
            raise EngineError("docker-registry not found (install Debian's docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        if self.users:
            self._write_htpasswd()
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
                    if resp.status == 200 and listener_owned_by(self._proc.pid, self.port):
                        return
            except urllib.error.HTTPError as exc:
                # serving, and asking for credentials as configured
                if exc.code == 401 and self.users and listener_owned_by(self._proc.pid, self.port):
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

    def pinned(self, name: str, tag: str) -> str:
        """`127.0.0.1:<port>/<name>@sha256:…`, the digest reference this registry serves for `name:tag`
        (Podman lists one it computed at load, which the registry lacks)."""
        return f"{self.ref(name)}@{self.manifest_digest(name, tag)}"

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


def bcrypt_hash(password: str) -> str:
    """A `$2b$` hash by the system's libcrypt (libxcrypt): Python 3.13 has no `crypt` module."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        raise RuntimeError("libcrypt made no bcrypt hash")
    return str(hashed.decode())
