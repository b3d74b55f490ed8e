"""The compose quickstart and the example configs: valid for the real tools, and wired to files that exist.

The stack cannot run here (no image pulls), so each piece is checked by the program that will read it:
Debian's ``docker-compose config`` for the compose file (with DOCKER_HOST pointing nowhere: ``config`` must
not need an engine), ``amtool`` for the Alertmanager configs (syntax and routing), ``promtool`` for the
Prometheus configs and the exporter's own ``--config.check`` for its config. Every path a service reads
inside its container is followed through the compose mounts back to a file in the repository.

The repository holds no webhook token: ``make-token.sh`` writes ``secrets/token`` and ``.env``, and compose
refuses to start without them. Tests that need a working file run the script in a copy of the quickstart
(``quickstart_copy``) or point ``WEBHOOK_TOKEN_FILE`` at a token in ``tmp_path``; a developer's own
``secrets/`` and ``.env`` in the checkout are never read (``--env-file`` names an empty file).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
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
MAKE_TOKEN = COMPOSE_DIR / "make-token.sh"
#: Where compose mounts its file secrets inside a container.
SECRETS_DIR = PurePosixPath("/run/secrets")
DOCKER_GID = "998"


def _tool(name: str) -> str:
    require_programs(name)
    path = find_program(name)
    assert path is not None
    return path


def _run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, check=False)


def _compose_env(**extra: str) -> dict[str, str]:
    """The environment without any docker/compose setting of the caller; the engine is nowhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "WEBHOOK_TOKEN_FILE"))}
    return {**env, "DOCKER_HOST": NOWHERE, **extra}


def _compose(
    project: Path, *args: str, env: dict[str, str], env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` on ``project``'s compose file; ``env_file`` replaces the project's ``.env``."""
    options = ["--project-directory", str(project), "-f", str(project / "docker-compose.yml")]
    if env_file is not None:
        options += ["--env-file", str(env_file)]
    return _run([_tool("docker-compose"), *options, *args], env=env)


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``docker-compose config`` output: the file as compose itself understands it (paths made absolute),
    with the values make-token.sh would put in .env given through the environment instead."""
    tmp = tmp_path_factory.mktemp("compose")
    token = tmp / "token"
    token.write_text("test-token\n")
    empty_env_file = tmp / "empty.env"
    empty_env_file.write_text("")
    env = _compose_env(WEBHOOK_TOKEN_FILE=str(token), DOCKER_GID=DOCKER_GID)
    result = _compose(COMPOSE_DIR, "config", env=env, env_file=empty_env_file)
    assert result.returncode == 0, result.stdout + result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture
def quickstart_copy(tmp_path: Path) -> Path:
    """examples/compose copied to tmp_path/examples/compose without any generated file, with the repository
    paths it refers to (``../..``) linked in, so make-token.sh and compose run there as a user would."""
    root = tmp_path / "repo"
    project = root / "examples" / "compose"
    shutil.copytree(COMPOSE_DIR, project, ignore=shutil.ignore_patterns("secrets", ".env"))
    for name in ("Dockerfile", "alerts", "dashboards"):
        (root / name).symlink_to(REPO / name)
    return project


def _make_token(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    require_programs("openssl")
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    return _run(["sh", str(project / "make-token.sh"), *args], env={**base, **env})


def _secret_host_path(config: dict[str, Any], service: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind ``container_path`` if it is one of the service's compose secrets."""
    path = PurePosixPath(container_path)
    for entry in service.get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        if path == SECRETS_DIR / target:
            return Path(config["secrets"][source]["file"])
    return None


def _port(port: str | dict[str, Any]) -> tuple[str, int, int]:
    """(host IP, published port, container port) of a ``ports`` entry as ``docker-compose config`` prints it:
    a dict, or with a host IP a string ``127.0.0.1:10151:10151/tcp`` (docker-compose v1)."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), int(port["published"]), int(port["target"])
    parts = port.split("/")[0].split(":")
    host_ip = parts[0] if len(parts) == 3 else ""
    return host_ip, int(parts[-2]), int(parts[-1])


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
    assert [_port(p) for p in exporter["ports"]] == [("127.0.0.1", 10151, 10151)]


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
    # The token file as the container sees it, resolved to the file the compose secret mounts there.
    token = _secret_host_path(compose_config, service, auth["bearer_token_file"])
    assert token is not None, "the exporter's bearer_token_file is not the compose secret"
    auth["bearer_token_file"] = str(token)
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
    am_token = _secret_host_path(compose_config, services["alertmanager"], authorization["credentials_file"])
    exporter_config = yaml.safe_load((COMPOSE_DIR / "exporter.yml").read_text(encoding="utf-8"))
    exporter_token = _secret_host_path(
        compose_config, services["exporter"], exporter_config["remediation"]["auth"]["bearer_token_file"]
    )
    assert am_token is not None and am_token == exporter_token and am_token.is_file()


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


# --------------------------------------------------------------------------------------------- token, ports


def test_the_repository_holds_no_token() -> None:
    """A committed token would be shared by every installation: nothing token-like is tracked."""
    tracked = _run(["git", "ls-files", "--", "examples/compose"], cwd=REPO)
    assert tracked.returncode == 0, tracked.stderr
    names = tracked.stdout.split()
    assert names, "git ls-files saw nothing: the test would check nothing"
    assert [n for n in names if "token" in PurePosixPath(n).name and not n.endswith(".sh")] == []
    assert not any(n.startswith("examples/compose/secrets/") or n == "examples/compose/.env" for n in names)
    ignored = (COMPOSE_DIR / ".gitignore").read_text(encoding="utf-8").split()
    assert {"/secrets/", "/.env"} <= set(ignored)


@pytest.mark.parametrize("command", [["config"], ["up", "--no-start"]])
def test_compose_refuses_to_start_without_make_token(quickstart_copy: Path, command: list[str]) -> None:
    result = _compose(quickstart_copy, *command, env=_compose_env())
    assert result.returncode != 0
    assert "run ./make-token.sh first" in result.stderr, result.stderr


def test_make_token_writes_a_token_compose_uses(quickstart_copy: Path) -> None:
    result = _make_token(quickstart_copy, DOCKER_GID=DOCKER_GID)
    assert result.returncode == 0, result.stdout + result.stderr
    secrets = quickstart_copy / "secrets"
    token = (secrets / "token").read_text(encoding="utf-8")
    assert re.fullmatch(r"[0-9a-f]{64}\n", token), token  # 32 random bytes from openssl rand
    # other host users cannot enter secrets/; the containers' users (10151, nobody) can read the mounted file
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets / "token").stat().st_mode) == 0o644
    # compose now starts, reading .env from the project directory as it does for a user
    config = _compose(quickstart_copy, "config", env=_compose_env())
    assert config.returncode == 0, config.stderr
    parsed = yaml.safe_load(config.stdout)
    assert Path(parsed["secrets"]["webhook-token"]["file"]) == secrets / "token"
    assert parsed["services"]["exporter"]["group_add"] == [DOCKER_GID]


def test_make_token_keeps_the_token_and_the_users_env(quickstart_copy: Path) -> None:
    (quickstart_copy / ".env").write_text("GRAFANA_ADMIN_PASSWORD=s3cret\nDOCKER_GID=1\n")
    assert _make_token(quickstart_copy, DOCKER_GID=DOCKER_GID).returncode == 0
    first = (quickstart_copy / "secrets" / "token").read_text(encoding="utf-8")
    again = _make_token(quickstart_copy, DOCKER_GID="999")
    assert again.returncode == 0 and "kept" in again.stdout
    assert (quickstart_copy / "secrets" / "token").read_text(encoding="utf-8") == first
    env_lines = (quickstart_copy / ".env").read_text(encoding="utf-8").splitlines()
    assert sorted(env_lines) == [
        "DOCKER_GID=999",
        "GRAFANA_ADMIN_PASSWORD=s3cret",
        "WEBHOOK_TOKEN_FILE=./secrets/token",
    ]
    forced = _make_token(quickstart_copy, "--force", DOCKER_GID=DOCKER_GID)
    assert forced.returncode == 0
    assert (quickstart_copy / "secrets" / "token").read_text(encoding="utf-8") != first


def test_make_token_reads_the_group_of_the_socket(quickstart_copy: Path) -> None:
    """Without DOCKER_GID the script records the group owning the socket (a socket of the test's own here)."""
    with tempfile.TemporaryDirectory(prefix="sock") as short_dir, socket.socket(socket.AF_UNIX) as server:
        path = Path(short_dir) / "docker.sock"  # unix socket paths are limited to ~107 bytes: keep it short
        server.bind(str(path))
        result = _make_token(quickstart_copy, DOCKER_SOCKET=str(path))
        gid = path.stat().st_gid
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"DOCKER_GID={gid}" in (quickstart_copy / ".env").read_text(encoding="utf-8").splitlines()


def test_make_token_needs_the_socket_group(quickstart_copy: Path) -> None:
    result = _make_token(quickstart_copy, DOCKER_SOCKET=str(quickstart_copy / "no.sock"))
    assert result.returncode != 0 and "set DOCKER_GID" in result.stderr
    assert not (quickstart_copy / ".env").exists() and not (quickstart_copy / "secrets").exists()
    bad = _make_token(quickstart_copy, DOCKER_GID="docker")
    assert bad.returncode != 0 and "numeric gid" in bad.stderr


def test_ports_are_published_on_loopback_only(compose_config: dict[str, Any]) -> None:
    ports = {name: [_port(p) for p in service.get("ports", [])] for name, service in compose_config["services"].items()}
    assert ports == {
        "exporter": [("127.0.0.1", 10151, 10151)],
        "prometheus": [("127.0.0.1", 9090, 9090)],
        "alertmanager": [("127.0.0.1", 9093, 9093)],
        "grafana": [("127.0.0.1", 3000, 3000)],
    }


def test_no_obsolete_version_key() -> None:
    """Compose v2 warns that `version` is obsolete (the Compose Specification has none)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert "version" not in raw and "services" in raw
