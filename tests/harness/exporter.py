"""The exporter as a real subprocess (`python -m exporter`), pointed only at a private engine.

Tests read it the way Prometheus does - over HTTP, parsing the exposition - so they check the shipped
behaviour (flags, config loading, HTTP routes), not internals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.dockerd import DOCKER_ENV_VARS
from tests.harness.lifecycle import Managed
from tests.harness.ports import free_port, listener_owned_by
from tests.harness.waiting import poll

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


class ExporterError(RuntimeError):
    """The exporter did not come up or answer as expected; the message carries its stderr tail."""


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample in an exposition as (name, labels, value)."""
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def find_sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the first sample called `name` whose labels include `labels`; None when absent."""
    want = dict(labels or {})
    for sname, slabels, value in parse_samples(text):
        if sname == name and all(slabels.get(k) == v for k, v in want.items()):
            return value
    return None


def check_web_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m exporter --web.config.file PATH --config.check`: what a start-up would say of that file."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(path), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )


class ExporterProcess(Managed):
    """`python -m exporter` with a config written from a dict, listening on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        engine_host: str,
        config: Mapping[str, Any] | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "exporter",
        client_tls: ssl.SSLContext | None = None,
        authorization: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.engine_host = engine_host
        #: `--runtime.endpoint` for a CRI runtime (the `exporter_factory` sets it for a PrivateContainerd).
        self.engine_flag = "--docker.host"
        self.config = dict(config or {})
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client_tls = client_tls  # set: the exporter serves HTTPS (--web.config.file) and we speak it
        self.url = f"{'https' if client_tls else 'http'}://{self.address}"
        #: Headers sent with every request this harness makes, health checks included (basic auth on every path).
        self.authorization = dict(authorization or {})
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.name = name
        self.config_path = self.workdir / f"{name}.yml"
        self.stdout_path = self.workdir / f"{name}.stdout.log"
        self.stderr_path = self.workdir / f"{name}.stderr.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(self.config_path),
            "--web.listen-address",
            self.address,
            self.engine_flag,
            self.engine_host,
            "--log.level",
            "debug",
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in DOCKER_ENV_VARS}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def write_config(self, config: Mapping[str, Any] | None = None) -> Path:
        """(Re)write the YAML config for the next `start` (the exporter reads its config only at start)."""
        if config is not None:
            self.config = dict(config)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.config_path

    def start(self, timeout: float = 30) -> None:
        """Spawn and wait for `GET /-/healthy` 200; on failure stop it and raise with its stderr tail."""
        self.spawn()
        self._wait_healthy(timeout)

    def spawn(self) -> None:
        """Start the process and return at once (`start` also waits until it answers)."""
        if self.running:
            raise ExporterError(f"{self.name} already running")
        self.write_config()
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=self.workdir,
                start_new_session=True,
            )

    def _wait_healthy(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ExporterError(f"{self.name} exited with {code}:\n{self.logs(40)}")
            # healthy, from this process: another program on a port this one failed to bind answers too
            if self._status("/-/healthy") == 200 and listener_owned_by(self._proc.pid, self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ExporterError(f"{self.name} not healthy after {timeout}s:\n{self.logs(40)}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait for `/-/ready` (a first snapshot exists) and for the inspects behind it (LastTagTime) to finish.

        Ready comes after the first listing; tests compare every value, so they wait for the rest too.
        """
        self.wait_for(lambda: self._status("/-/ready") == 200, timeout, what="/-/ready")
        self.wait_for(self._inspects_done, timeout, what="no pending inspects")

    def _inspects_done(self) -> bool:
        """No pending inspects, or no /metrics to ask (behind basic auth, another telemetry path)."""
        status, body = self.request("GET", "/metrics", timeout=10)
        if status != 200:
            return status != 503
        pending = [v for n, _, v in parse_samples(body.decode()) if n == "docker_exporter_pending_inspects"]
        return pending == [0.0]

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def signal(self, sig: int) -> None:
        """Send `sig` to the running exporter (`stop` sends SIGTERM itself)."""
        if self._proc is None:
            raise ExporterError(f"{self.name} not running")
        self._proc.send_signal(sig)

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _status(self, path: str) -> int | None:
        try:
            return self.request("GET", path, timeout=5)[0]
        except (urllib.error.URLError, OSError):
            return None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        """One HTTP request to the exporter, with `authorization`; (status, body) for every status, errors included."""
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers={**self.authorization, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.client_tls) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str, timeout: float = 30) -> str:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ExporterError(f"GET {path} -> {status}: {body[:500]!r}")
        return body.decode()

    def metrics_text(self, path: str = "/metrics") -> str:
        """The text exposition (format 0.0.4, which is what urllib's plain Accept gets)."""
        return self.get(path)

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One value from a fresh scrape: the first sample `name` whose labels include `labels`."""
        return find_sample(self.metrics_text(), name, labels)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every (labels, value) of `name` in a fresh scrape."""
        return [(lbl, v) for n, lbl, v in parse_samples(self.metrics_text()) if n == name]

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "condition"
    ) -> T:
        """Poll `predicate` until it returns something truthy; raise with the log tail on timeout.

        Exceptions from the predicate count as "not yet" (the exporter may be restarting); the last one is
        reported.
        """

        def timed_out(last: BaseException | None) -> Exception:
            detail = f" (last error: {last!r})" if last else ""
            return ExporterError(f"{what} not met within {timeout}s{detail}\n{self.logs(30)}")

        return poll(predicate, timeout, interval, timed_out)

    # -- diagnostics ----------------------------------------------------------------------------------------

    def logs(self, lines: int | None = None) -> str:
        """Its stderr (where logs go), the last `lines` lines if given."""
        with contextlib.suppress(OSError):
            text = self.stderr_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:]) if lines else text
        return ""
