"""Debian's Prometheus 2.42 and Alertmanager 0.25 as private processes on loopback ports.

End-to-end tests run the real programs (1 s scrape/evaluation, `group_wait: 1s`) with configs written from
dicts into a temp dir, and read them over their HTTP APIs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.harness.exporter import find_sample
from tests.harness.ports import free_port, listener_owned_by
from tests.harness.waiting import poll

T = TypeVar("T")


class ProgramError(RuntimeError):
    """A program did not come up or answer; the message carries its log tail."""


class _Program:
    binary = ""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise ProgramError(f"{self.binary} not installed (make test installs it)")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [binary, *self.args()], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.wait_for(self._ready, timeout, what=f"{self.name} ready on its own port")

    def _ready(self) -> bool:
        """Ready, and the listener is this process's: another's on a port it failed to bind says ready too."""
        assert self._proc is not None
        return self._status("/-/ready") == 200 and listener_owned_by(self._proc.pid, self.port)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def _status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def get_json(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str) -> int:
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)

    def metric(self, name: str, labels: Mapping[str, str]) -> float:
        """One sample of the program's own `/metrics` (0 when absent)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            return find_sample(resp.read().decode(), name, dict(labels)) or 0.0

    def logs(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60, interval: float = 0.2, what: str = "") -> T:
        def exited() -> None:
            if self._proc is not None and self._proc.poll() is not None:
                raise ProgramError(f"{self.name} exited with {self._proc.returncode}:\n{self.logs()}")

        return poll(
            predicate,
            timeout,
            interval,
            lambda last: ProgramError(f"{what or 'condition'} not met in {timeout}s (last: {last!r})\n{self.logs()}"),
            check=exited,
        )


class PrivatePrometheus(_Program):
    """Prometheus scraping `targets` every second and evaluating `rule_files` every second."""

    binary = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        rules: Sequence[Mapping[str, Any]] = (),
        alertmanagers: Sequence[str] = (),
        job: str = "docker-image-exporter",
        extra_jobs: Sequence[Mapping[str, Any]] = (),
        tls_config: Mapping[str, Any] | None = None,
    ) -> None:
        """`tls_config` (Prometheus's own keys) makes the main job scrape over HTTPS; `extra_jobs` are added
        as they are."""
        super().__init__(workdir, "prometheus")
        rule_files = []
        for index, rule_doc in enumerate(rules):
            path = self.workdir / f"rules-{index}.yml"
            path.write_text(yaml.safe_dump(dict(rule_doc), sort_keys=False))
            rule_files.append(str(path))
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}, *extra_jobs],
        }
        if tls_config is not None:
            config["scrape_configs"][0] |= {"scheme": "https", "tls_config": dict(tls_config)}
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on a PromQL error (Prometheus answers 400 with the parser's message)."""
        try:
            answer = self.get_json("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:
            raise ProgramError(f"query failed: {expr}\n{exc.read().decode(errors='replace')}") from None
        result: list[dict[str, Any]] = answer["data"]["result"] if answer["data"]["resultType"] == "vector" else []
        return result

    def query_range(self, expr: str, seconds: float = 60, step: str = "1s") -> list[dict[str, Any]]:
        end = time.time()
        try:
            answer = self.get_json("/api/v1/query_range", query=expr, start=str(end - seconds), end=str(end), step=step)
        except urllib.error.HTTPError as exc:
            raise ProgramError(f"range query failed: {expr}\n{exc.read().decode(errors='replace')}") from None
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get_json("/api/v1/alerts")["data"]["alerts"]
        return answer

    def wait_scraped(self, timeout: float = 30) -> None:
        self.wait_for(lambda: self.query("up == 1"), timeout, what="first successful scrape")


class PrivateAlertmanager(_Program):
    """Alertmanager with the given config dict (a webhook receiver, usually)."""

    binary = "prometheus-alertmanager"

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        super().__init__(workdir, "alertmanager")
        self.cluster_port = free_port()
        self.config_path = self.workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # a private, single-node cluster: no gossip with anything else on this machine
            f"--cluster.listen-address=127.0.0.1:{self.cluster_port}",
            "--cluster.advertise-address=127.0.0.1:" + str(self.cluster_port),
        ]

    def alerts(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get_json("/api/v2/alerts")
        return answer

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Inject alerts as Prometheus would (`POST /api/v2/alerts`)."""
        body = json.dumps(list(alerts)).encode()
        req = urllib.request.Request(
            self.url + "/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise ProgramError(f"alertmanager refused alerts: {resp.status}")


def alert_remediation(
    directory: Path, token: str, *, action: str = "clean", cooldown: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The token file both sides read (written as `directory/token`) and the exporter's `remediation` section an
    Alertmanager drives: `DockerDanglingImages` routed to `action`, a dangling prune of images an hour old,
    audited to `directory/audit.jsonl`."""
    token_file = directory / "token"
    token_file.write_text(token + "\n")
    route: dict[str, Any] = {"matchers": ['alertname="DockerDanglingImages"'], "action": action}
    if cooldown is not None:
        route["cooldown"] = cooldown
    return token_file, {
        "enabled": True,
        "auth": {"bearer_token_file": str(token_file)},
        "audit_log": str(directory / "audit.jsonl"),
        "actions": {action: {"type": "prune_dangling", "min_age": "1h"}},
        "routes": [route],
    }


def webhook_receiver_config(
    url: str,
    token_file: Path,
    *,
    group_by: Sequence[str] = ("alertname", "instance"),
    group_interval: str = "5s",
    repeat_interval: str = "1h",
    matchers: Sequence[str] = (),
    tls_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An Alertmanager config that sends matching alerts to the exporter's webhook with a bearer token file
    (and, for an https:// url, Alertmanager's `tls_config`)."""
    http_config: dict[str, Any] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    if tls_config is not None:
        http_config["tls_config"] = dict(tls_config)
    route: dict[str, Any] = {
        "receiver": "exporter",
        "group_by": list(group_by),
        "group_wait": "1s",
        "group_interval": group_interval,
        "repeat_interval": repeat_interval,
    }
    if matchers:
        route = {"receiver": "null", "routes": [{**route, "matchers": list(matchers)}]}
    return {
        "route": route,
        "receivers": [
            {"name": "null"},
            {
                "name": "exporter",
                "webhook_configs": [
                    {
                        "url": url,
                        "send_resolved": True,
                        "http_config": http_config,
                    }
                ],
            },
        ],
    }
