"""The compose quickstart and the example configs: valid for the real tools, and wired to files that exist.

The stack cannot run here (no image pulls), so each piece is checked by the program that will read it:
Debian's ``docker-compose config`` for the compose file (with DOCKER_HOST pointing nowhere: ``config`` must
not need an engine), ``amtool`` for the Alertmanager configs (syntax and routing), ``promtool`` for the
Prometheus configs and the exporter's own ``--config.check`` for its config. Every path a service reads
inside its container is followed through the compose mounts back to a file in the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from alerts.render import REMEDIATION_LABELS, render_rules
from dashboards.generate import DASHBOARDS
from tests.harness.dockerd import find_program
from tests.harness.requires import require_programs

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "examples" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
#: Host paths outside the repository the quickstart mounts: they exist on any Docker host.
HOST_PATHS = {"/var/run/docker.sock", "/var/lib/docker"}
NOWHERE = "unix:///nonexistent/compose-config-needs-no-engine.sock"


def _tool(name: str) -> str:
    require_programs(name)
    path = find_program(name)
    assert path is not None
    return path


def _run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    """``docker-compose config`` output: the file as compose itself understands it (paths made absolute)."""
    compose = _tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    env["DOCKER_HOST"] = NOWHERE
    result = _run([compose, "--project-directory", str(COMPOSE_DIR), "-f", str(COMPOSE_FILE), "config"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _binds(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume; named volumes have a source without a slash."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
        else:
            source, target = volume.get("source", ""), volume["target"]
            mode = "ro" if volume.get("read_only") else "rw"
        out.append((source, target, mode))
    return out


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where ``container_path`` inside the service comes from on the host, through its bind mounts."""
    path = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for source, target, _mode in _binds(service):
        if not source.startswith("/"):
            continue
        tpath = PurePosixPath(target)
        if path == tpath or tpath in path.parents:
            depth = len(tpath.parts)
            if best is None or depth > best[0]:
                best = (depth, Path(source) / path.relative_to(tpath))
    assert best is not None, f"{container_path} is not mounted from the host"
    return best[1]


def test_compose_config_needs_no_engine_and_has_the_stack(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == {"exporter", "prometheus", "alertmanager", "grafana"}
    exporter = compose_config["services"]["exporter"]
    assert exporter["image"] == "docker-image-exporter:latest"
    assert Path(exporter["build"]["context"]) == REPO
    assert (REPO / exporter["build"].get("dockerfile", "Dockerfile")).is_file()
    assert any(p.get("target") == 10151 for p in exporter["ports"])


def test_every_mounted_host_path_exists(compose_config: dict[str, Any]) -> None:
    declared = set(compose_config.get("volumes", {}))
    for name, service in compose_config["services"].items():
        for source, target, _mode in _binds(service):
            if not source.startswith("/"):
                assert source in declared, f"{name}: named volume {source} not declared"
            elif Path(source).is_relative_to(REPO):
                assert Path(source).exists(), f"{name}: mounts {source} (-> {target}), which is not in the repo"
            else:
                assert source in HOST_PATHS, f"{name}: mounts unexpected host path {source}"


def test_exporter_mounts(compose_config: dict[str, Any]) -> None:
    mounts = {target: (source, mode) for source, target, mode in _binds(compose_config["services"]["exporter"])}
    assert mounts["/var/lib/docker"] == ("/var/lib/docker", "ro")
    exporter_config = yaml.safe_load((COMPOSE_DIR / "exporter.yml").read_text(encoding="utf-8"))
    # Read-write socket only because the example turns remediation on.
    assert mounts["/var/run/docker.sock"][1] == ("rw" if exporter_config["remediation"]["enabled"] else "ro")
    assert exporter_config["filesystem"]["path"] == "/var/lib/docker"


def test_exporter_config_passes_the_exporters_own_check(compose_config: dict[str, Any], tmp_path: Path) -> None:
    service = compose_config["services"]["exporter"]
    config_arg = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = _host_path(service, config_arg.split("=", 1)[1])
    assert config_path == COMPOSE_DIR / "exporter.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    auth = config["remediation"]["auth"]
    # The token file as the container sees it, resolved to the repository file the compose mounts there.
    auth["bearer_token_file"] = str(_host_path(service, auth["bearer_token_file"]))
    checked = tmp_path / "exporter.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _run([sys.executable, "-m", "exporter", "--config.file", str(checked), "--config.check"], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_and_exporter_share_the_token(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    am_config = yaml.safe_load((COMPOSE_DIR / "alertmanager.yml").read_text(encoding="utf-8"))
    webhook = next(r for r in am_config["receivers"] if r["name"] == "docker-image-exporter")["webhook_configs"][0]
    assert webhook["url"] == "http://exporter:10151/webhook/alertmanager"
    assert webhook["send_resolved"] is True
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    am_token = _host_path(services["alertmanager"], authorization["credentials_file"])
    exporter_config = yaml.safe_load((COMPOSE_DIR / "exporter.yml").read_text(encoding="utf-8"))
    exporter_token = _host_path(services["exporter"], exporter_config["remediation"]["auth"]["bearer_token_file"])
    assert am_token == exporter_token and am_token.is_file()


@pytest.mark.parametrize(
    "path",
    [REPO / "examples/alertmanager/alertmanager.yml", COMPOSE_DIR / "alertmanager.yml"],
    ids=["example", "compose"],
)
def test_alertmanager_config_checks_and_routes(path: Path) -> None:
    amtool = _tool("amtool")
    result = _run([amtool, "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    for alertname, remediation in REMEDIATION_LABELS.items():
        labels = [f"alertname={alertname}", "instance=host-a:10151", "severity=warning"]
        labels += [f"remediation={remediation}"] if remediation else []
        routed = _run([amtool, "config", "routes", "test", f"--config.file={path}", *labels])
        receivers = set(routed.stdout.strip().split(","))
        if remediation is None:
            assert "docker-image-exporter" not in receivers, (alertname, receivers)
        else:
            assert "docker-image-exporter" in receivers, (alertname, receivers)
            assert "null" in receivers, f"{alertname}: humans should see remediation alerts too"
    example = yaml.safe_load(path.read_text(encoding="utf-8"))
    webhook = next(r for r in example["receivers"] if r["name"] == "docker-image-exporter")["webhook_configs"][0]
    assert webhook["url"].endswith(":10151/webhook/alertmanager")
    assert "credentials_file" in webhook["http_config"]["authorization"]
    route = next(r for r in example["route"]["routes"] if r["receiver"] == "docker-image-exporter")
    assert route["group_by"] == ["alertname", "instance"]


def test_example_prometheus_config_loads_the_rules() -> None:
    promtool = _tool("promtool")
    result = _run([promtool, "check", "config", str(REPO / "examples/prometheus/prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in render_rules()["groups"])
    assert "docker-image-exporter.rules.yml" in result.stdout and f"SUCCESS: {count} rules found" in result.stdout


def test_compose_prometheus_config_loads_the_rules(compose_config: dict[str, Any], tmp_path: Path) -> None:
    service = compose_config["services"]["prometheus"]
    config_arg = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = _host_path(service, config_arg.split("=", 1)[1])
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    # Rule files as the container sees them -> the repository files the compose mounts there.
    config["rule_files"] = [str(_host_path(service, p)) for p in config["rule_files"]]
    assert config["rule_files"] == [str(REPO / "alerts" / "docker-image-exporter.rules.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["docker-image-exporter"]["static_configs"][0]["targets"] == ["exporter:10151"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _run([_tool("promtool"), "check", "config", str(checked)])
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in render_rules()["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_grafana_provisioning_wires_datasource_and_dashboards(compose_config: dict[str, Any]) -> None:
    service = compose_config["services"]["grafana"]
    provisioning = _host_path(service, "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"]
    providers = yaml.safe_load((provisioning / "dashboards" / "docker-image-exporter.yml").read_text(encoding="utf-8"))
    (provider,) = providers["providers"]
    dashboards_dir = _host_path(service, provider["options"]["path"])
    assert dashboards_dir == REPO / "dashboards"
    assert {p.name for p in dashboards_dir.glob("*.json")} == set(DASHBOARDS)
