"""The parts of the fleet: hosts (loop filesystem + private dockerd + exporter), the Alertmanager pair,
Prometheus with file-discovered targets, and the process measurements the sizing table comes from.

Everything is built from the harness (tests/harness/): the same private engines, exporters and Debian
Prometheus/Alertmanager as the end-to-end tests, only many of them at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.harness.audit import read_audit
from tests.harness.dockerd import LoopFilesystem, PrivateDockerd, remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.promstack import PrivateAlertmanager, PrivatePrometheus
from tests.harness.state import write_saved_state
from tests.harness.waiting import poll

T = TypeVar("T")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


TOKEN = "fleet-token"
JOB_DEFAULT = "docker-image-exporter"
#: Hosts with `metrics.per_image: false`, so one run measures both settings side by side.
JOB_LEAN = "docker-image-exporter-lean"
#: The loop filesystem of every host: small, so a ballast file presses it in a moment.
FS_MB = 96
IMAGES_PER_HOST = 6
IMAGE_BYTES = 4 * 2**20
#: Small images carrying the protected label: more per-tag series to measure, never deleted.
KEPT_IMAGES_PER_HOST = env_int("FLEET_KEPT_IMAGES", 24)
KEPT_REPOSITORIES = 4
#: free_space goal: with the shipped rules' warning at 15 % free (clearing at 20 %), a host pressed to
#: 10 % free needs four of its six images deleted to reach this, and then the alert resolves.
TARGET_AVAIL_RATIO = 0.30
PRESSED_AVAIL_RATIO = 0.10
POLL_INTERVAL = "10s"
#: The route's cooldown; FLEET_COOLDOWN=0s is the control that shows the test catches a second run.
COOLDOWN = os.environ.get("FLEET_COOLDOWN", "10m")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll until `predicate` is truthy (exceptions count as not yet); AssertionError naming `what` on timeout."""
    return poll(
        predicate,
        timeout,
        interval,
        lambda last: AssertionError(f"{what}: not within {timeout:.0f}s (last error: {last!r})"),
    )


# --------------------------------------------------------------------------------------------- /proc


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --------------------------------------------------------------------------------------------- hosts


@dataclass
class Host:
    """One fleet member: its own loop filesystem as data root, engine, images, exporter and audit log."""

    index: int
    per_image: bool
    workdir: Path = field(init=False)
    fs: LoopFilesystem = field(init=False)
    engine: PrivateDockerd = field(init=False)
    exporter: ExporterProcess = field(init=False)
    image_ids: list[str] = field(default_factory=list)
    kept_ids: list[str] = field(default_factory=list)
    #: runs counted by exporter processes that were since restarted (their counters started again at 0)
    runs_before_restart: float = 0.0
    setup_seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"host-{self.index:02d}"

    @property
    def job(self) -> str:
        return JOB_DEFAULT if self.per_image else JOB_LEAN

    @property
    def address(self) -> str:
        return self.exporter.address

    @property
    def webhook_url(self) -> str:
        return f"http://{self.address}/webhook/alertmanager"

    @property
    def audit_path(self) -> Path:
        return self.workdir / "audit.jsonl"

    @property
    def ballast(self) -> Path:
        return self.fs.mountpoint / "ballast"

    def setup(self) -> None:
        """Filesystem, engine, images, exporter: everything this host needs, started and ready."""
        started = time.monotonic()
        self.workdir = short_workdir(f"fl{self.index:02d}-")
        self.fs = LoopFilesystem(self.workdir / "fs", FS_MB)
        self.fs.__enter__()
        self.engine = PrivateDockerd(self.workdir / "e", data_root=self.fs.mountpoint / "docker", name=self.name)
        self.engine.start(timeout=180)
        old = datetime.now(UTC) - timedelta(days=10 + self.index)
        specs = [
            ImageSpec(
                tags=[f"fleet/{self.name}-app{n}:v1"],
                layers=[Layer.random(IMAGE_BYTES, f"{self.name}-{n}")],
                created=old + timedelta(hours=n),
            )
            for n in range(IMAGES_PER_HOST)
        ]
        kept = [
            ImageSpec(
                tags=[f"fleet/{self.name}-tool{n % KEPT_REPOSITORIES}:v{n}"],
                layers=[Layer.random(16 * 1024, f"{self.name}-kept-{n}")],
                created=old,
                labels={"keep": "true"},
            )
            for n in range(KEPT_IMAGES_PER_HOST)
        ]
        loaded = load_images(self.engine, specs + kept)
        self.image_ids, self.kept_ids = loaded[: len(specs)], loaded[len(specs) :]
        write_saved_state(self.workdir / "state.json", self.engine, saved_at=time.time() - 3600)
        self.exporter = ExporterProcess(
            self.workdir / "x", self.engine.host, name="exporter", extra_args=("--log.level", "info")
        )
        self.exporter.write_config(self.config())
        self.exporter.start(timeout=180)
        self.exporter.wait_ready(timeout=180)
        self.setup_seconds = time.monotonic() - started

    def config(self) -> dict[str, Any]:
        return {
            "filesystem": {"path": str(self.engine.data_root)},
            "state": {"path": str(self.workdir / "state.json")},
            "poll": {"interval": POLL_INTERVAL},
            "metrics": {"per_image": self.per_image},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": TOKEN},
                "audit_log": str(self.audit_path),
                "protect": {"labels": ["keep=true"]},
                "actions": {
                    "free-disk": {"type": "free_space", "target_avail_ratio": TARGET_AVAIL_RATIO, "min_age": "1s"}
                },
                "routes": [{"matchers": ['remediation="free-disk"'], "action": "free-disk", "cooldown": COOLDOWN}],
                "relay": {
                    "enabled": True,
                    "self_names": [self.address],
                    "host_regex": r"127\.0\.0\.1:[0-9]{1,5}",  # the fleet's own loopback peers only
                    "timeout": "5s",
                },
            },
        }

    def press(self) -> None:
        """Write a ballast file until the data root has PRESSED_AVAIL_RATIO of its size available."""
        goal = int(self.fs.size_bytes() * PRESSED_AVAIL_RATIO)
        fill = self.fs.avail_bytes() - goal
        with open(self.ballast, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, fill)

    def image_ids_now(self) -> set[str]:
        return {str(i["Id"]) for i in self.engine.get_json("/images/json")}

    def avail_ratio(self) -> float:
        return self.fs.avail_bytes() / self.fs.size_bytes()

    def runs_now(self) -> float:
        """free-disk runs counted by the exporter process running now."""
        return sum(
            v for labels, v in self.exporter.samples("docker_remediation_runs_total") if labels["action"] == "free-disk"
        )

    def audited_runs(self) -> dict[str, list[dict[str, Any]]]:
        """The audit log's records grouped by run_id (each run writes at least one line)."""
        if not self.audit_path.exists():
            return {}
        runs: dict[str, list[dict[str, Any]]] = {}
        for record in read_audit(self.audit_path):
            runs.setdefault(str(record.get("run_id")), []).append(record)
        return runs

    def restart_exporter(self, down_seconds: float) -> None:
        """Stop the exporter (SIGTERM), stay down `down_seconds`, start it again with the same config."""
        with contextlib.suppress(Exception):
            self.runs_before_restart += self.runs_now()
        self.exporter.stop()
        time.sleep(down_seconds)
        self.exporter.start(timeout=120)

    def teardown(self) -> list[str]:
        """Stop everything of this host; the problems found (leftover mounts or processes), if any."""
        problems: list[str] = []
        if hasattr(self, "exporter"):
            self.exporter.stop()
        if hasattr(self, "engine"):
            try:
                self.engine.stop()
                mounts, procs = self.engine.leftovers()
                if mounts or procs:
                    problems.append(f"{self.name}: engine left mounts {mounts} processes {procs}")
            except Exception as exc:
                problems.append(f"{self.name}: engine stop failed: {exc!r}")
        if hasattr(self, "fs"):
            self.fs.cleanup()
            if self.fs.loop_devices():
                problems.append(f"{self.name}: loop device still attached")
        if hasattr(self, "workdir") and os.environ.get("DIE_KEEP_WORKDIR") != "1" and not remove_workdir(self.workdir):
            problems.append(f"{self.name}: {self.workdir} still has mounts")
        return problems


def build_hosts(count: int, workers: int) -> list[Host]:
    """`count` hosts set up `workers` at a time (staggered, so dockerd starts do not all land at once);
    every second host keeps per-image series on (the default), the others turn them off."""
    hosts = [Host(index=i, per_image=i % 2 == 0) for i in range(count)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = []
        for host in hosts:
            futures.append(pool.submit(host.setup))
            time.sleep(0.3)
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        problems = teardown_hosts(hosts, workers)
        raise RuntimeError(f"{len(failed)} hosts failed to start: {failed[0]!r}; teardown: {problems}")
    return hosts


def teardown_hosts(hosts: Sequence[Host], workers: int) -> list[str]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(Host.teardown, hosts))
    return [p for r in results for p in r]


# --------------------------------------------------------------------------------------------- alerting


class ClusteredAlertmanager(PrivateAlertmanager):
    """An Alertmanager replica gossiping with its peers on loopback (`--cluster.peer`)."""

    def __init__(self, workdir: Path, config: Mapping[str, Any], name: str) -> None:
        super().__init__(workdir, config)
        self.name = name
        self.log_path = self.workdir / f"{name}.log"
        self.peers: list[str] = []

    def args(self) -> list[str]:
        return [*super().args(), *(f"--cluster.peer={peer}" for peer in self.peers)]

    @property
    def cluster_address(self) -> str:
        return f"127.0.0.1:{self.cluster_port}"

    def kill(self) -> None:
        """SIGKILL, as a crashed replica: no goodbye to its peer."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
            return str(resp.read().decode())

    def cluster_size(self) -> int:
        return len(self.get_json("/api/v2/status")["cluster"]["peers"])


def alertmanager_config(direct: Sequence[Host], relay_entries: Sequence[Host], token_file: Path) -> dict[str, Any]:
    """free-disk alerts about `direct` hosts go to their own exporter; all others to the relay entries,
    which relay each alert to the exporter on the host its `instance` names (docs/deploy.md, fleet mode)."""
    http_config = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}

    def receiver(name: str, urls: Sequence[str]) -> dict[str, Any]:
        return {
            "name": name,
            "webhook_configs": [{"url": u, "send_resolved": True, "http_config": http_config} for u in urls],
        }

    routes = [
        {"matchers": ['remediation="free-disk"', f'instance="{h.address}"'], "receiver": f"direct-{h.name}"}
        for h in direct
    ]
    routes.append({"matchers": ['remediation="free-disk"'], "receiver": "relay"})
    return {
        "route": {
            "receiver": "null",
            "group_by": ["alertname", "instance"],
            "group_wait": "1s",
            "group_interval": "5s",
            "repeat_interval": "1h",
            "routes": routes,
        },
        "receivers": [
            {"name": "null"},
            *(receiver(f"direct-{h.name}", [h.webhook_url]) for h in direct),
            receiver("relay", [h.webhook_url for h in relay_entries]),
        ],
    }


class FleetPrometheus(PrivatePrometheus):
    """Prometheus with file-discovered targets (so the sizing can measure it before and after the fleet
    arrives), both exporter jobs, the project's rules and both Alertmanager replicas."""

    def __init__(self, workdir: Path, rules: Sequence[Mapping[str, Any]], alertmanagers: Sequence[str]) -> None:
        super().__init__(workdir, [], rules=rules, alertmanagers=alertmanagers)
        config = yaml.safe_load(self.config_path.read_text())
        config["scrape_configs"] = [
            {"job_name": job, "file_sd_configs": [{"files": [str(self.targets_file(job))], "refresh_interval": "1s"}]}
            for job in (JOB_DEFAULT, JOB_LEAN)
        ]
        for job in (JOB_DEFAULT, JOB_LEAN):
            self.targets_file(job).write_text("[]\n")
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def targets_file(self, job: str) -> Path:
        return self.workdir / f"targets-{job}.json"

    def set_targets(self, hosts: Sequence[Host]) -> None:
        for job in (JOB_DEFAULT, JOB_LEAN):
            targets = [h.address for h in hosts if h.job == job]
            tmp = self.targets_file(job).with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": targets}]))
            tmp.replace(self.targets_file(job))

    @property
    def process_id(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def own_metric(self, name: str) -> float:
        """A sample of Prometheus's own /metrics (served whether or not anything scrapes it)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return float("nan")

    def head_series(self) -> int:
        return int(self.get_json("/api/v1/status/tsdb")["data"]["headStats"]["numSeries"])

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else float("nan")
