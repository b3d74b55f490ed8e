"""Reload (issue 13) inside one process: what is refused, what applies live, and what a reload leaves alone.

The process-level behaviour (SIGHUP, the flag, token files on disk) is in tests/integration/test_reload.py;
here are the parts a real engine adds nothing to: the restart-only rules, the remediation service's state
across a reload, and the `/-/reload` endpoint of the app.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from exporter.app import create_app
from exporter.config import Config, parse_config
from exporter.web.reload import Reloader, ReloadSource, restart_only_changes, web_restart_only_changes
from exporter.web.webconfig import WebConfig, parse_web_config
from tests.unit.recorded import RecordedEngine
from tests.unit.webhook_support import BEARER, TOKEN, AppFactory, app_factory_for, make_config

FREE_DISK = {"free-disk": {"type": "free_space", "target_avail_ratio": 0.3}}
ROUTE = [{"matchers": ['alertname="DockerDiskPressure"'], "action": "free-disk", "cooldown": "10m"}]


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ------------------------------------------------------------------------------------- what is refused


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"docker": {"host": "tcp://192.0.2.1:2375"}}, "docker.host"),
        ({"docker": {"timeout": "5s"}}, "docker.timeout"),
        ({"state": {"path": "/elsewhere/state.json"}}, "state.path"),
        ({"remediation": {"enabled": True, "auth": {"bearer_token": "t"}}}, "remediation.enabled"),
    ],
)
def test_keys_read_only_at_start_are_named(change: dict[str, Any], key: str) -> None:
    assert restart_only_changes(parse_config({}), parse_config(change)) == [key]


def test_live_keys_are_not_restart_only() -> None:
    new = parse_config({"poll": {"interval": "5s"}, "metrics": {"per_image": False}, "filesystem": {"path": "/x"}})
    assert restart_only_changes(parse_config({}), new) == []


def test_remediation_files_and_limits_are_restart_only_while_it_is_enabled() -> None:
    enabled = {"enabled": True, "auth": {"bearer_token": "t"}}
    moved = {"audit_log": "/elsewhere.jsonl", "max_body_bytes": "2MiB"}
    old, new = parse_config({"remediation": enabled}), parse_config({"remediation": {**enabled, **moved}})
    assert restart_only_changes(old, new) == ["remediation.audit_log", "remediation.max_body_bytes"]
    assert restart_only_changes(parse_config({}), parse_config({"remediation": moved})) == []  # disabled: unused


def test_web_config_headers_apply_live_but_tls_does_not(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"  # the model checks the files are readable
    cert.write_text("cert")
    key.write_text("key")
    headers = parse_web_config({"http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    with_tls = parse_web_config({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
    assert web_restart_only_changes(WebConfig(), headers) == []
    assert web_restart_only_changes(WebConfig(), with_tls) == ["tls_server_config"]


# ------------------------------------------------------------------------------------- the reloader


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def reloader_for(tmp_path: Path, first: dict[str, Any]) -> tuple[Reloader, list[Config], CollectorRegistry]:
    path = write(tmp_path / "config.yml", first)
    applied: list[Config] = []
    registry = CollectorRegistry()
    now = iter(range(100, 200))
    reloader = Reloader(
        ReloadSource(str(path)),
        parse_config(first),
        WebConfig(),
        lambda config, _web: applied.append(config),
        registry,
        clock=lambda: float(next(now)),
    )
    return reloader, applied, registry


async def test_a_good_config_is_applied_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reloader, applied, registry = reloader_for(tmp_path, {"poll": {"interval": "30s"}})
    assert sample(registry, "docker_exporter_config_last_reload_successful") == 1  # set at start, as Prometheus
    assert sample(registry, "docker_exporter_config_last_reload_success_timestamp_seconds") == 100
    write(tmp_path / "config.yml", {"poll": {"interval": "5s"}})
    with caplog.at_level(logging.INFO, "exporter.reload"):
        result = await reloader.reload("test")
    assert result.ok
    assert [c.poll.interval for c in applied] == [5.0]
    assert reloader.config.poll.interval == 5.0
    assert sample(registry, "docker_exporter_config_last_reload_success_timestamp_seconds") == 101
    assert [(r.getMessage(), getattr(r, "log_fields", None)) for r in caplog.records] == [
        ("configuration reloaded", {"file": f"{tmp_path}/config.yml", "trigger": "test"})
    ]


async def test_a_bad_config_is_refused_naming_the_key_and_the_old_one_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader, applied, registry = reloader_for(tmp_path, {"poll": {"interval": "30s"}})
    write(tmp_path / "config.yml", {"poll": {"interval": "soon"}})
    with caplog.at_level(logging.INFO, "exporter.reload"):
        result = await reloader.reload("test")
    assert not result.ok
    assert "poll.interval" in result.message
    assert applied == [] and reloader.config.poll.interval == 30.0
    assert sample(registry, "docker_exporter_config_last_reload_successful") == 0
    assert sample(registry, "docker_exporter_config_last_reload_success_timestamp_seconds") == 100
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "reload failed, keeping the old configuration"
    fields = getattr(record, "log_fields", {})
    assert fields["trigger"] == "test" and fields["err"].startswith("poll.interval")


async def test_a_restart_only_change_refuses_the_whole_reload(tmp_path: Path) -> None:
    reloader, applied, registry = reloader_for(tmp_path, {"poll": {"interval": "30s"}})
    write(tmp_path / "config.yml", {"poll": {"interval": "5s"}, "docker": {"host": "tcp://192.0.2.1:2375"}})
    result = await reloader.reload("test")
    assert not result.ok
    assert "docker.host cannot change on reload; restart the exporter" in result.message
    assert applied == [] and reloader.config.poll.interval == 30.0  # the live key is not applied either
    write(tmp_path / "config.yml", {"poll": {"interval": "5s"}})
    assert (await reloader.reload("test")).ok
    assert sample(registry, "docker_exporter_config_last_reload_successful") == 1


async def test_a_bad_web_config_is_refused_naming_its_flag(tmp_path: Path) -> None:
    config_file = write(tmp_path / "config.yml", {})
    web_file = write(tmp_path / "web.yml", {"http_server_config": {"headers": {"Server": "x"}}})
    registry = CollectorRegistry()
    reloader = Reloader(ReloadSource(str(config_file), str(web_file)), parse_config({}), WebConfig(), _fail, registry)
    result = await reloader.reload("test")
    assert not result.ok
    assert "--web.config.file http_server_config.headers.Server: not settable here" in result.message
    assert reloader.web_config == WebConfig()


async def test_a_deeply_nested_config_is_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    reloader, applied, registry = reloader_for(tmp_path, {"poll": {"interval": "30s"}})
    (tmp_path / "config.yml").write_text("poll: " + "[" * 5000 + "]" * 5000 + "\n")
    result = await reloader.reload("test")
    assert not result.ok
    assert "line 1: nesting deeper than 100 levels" in result.message
    assert applied == [] and reloader.config.poll.interval == 30.0
    assert sample(registry, "docker_exporter_config_last_reload_successful") == 0


async def test_an_unexpected_error_while_reading_refuses_the_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reloader, applied, registry = reloader_for(tmp_path, {"poll": {"interval": "30s"}})

    def broken(_path: str | None) -> Config:
        raise RuntimeError("parser bug")

    monkeypatch.setattr("exporter.web.reload.load_config", broken)
    with caplog.at_level(logging.INFO, "exporter.reload"):
        result = await reloader.reload("test")
    assert not result.ok
    assert "RuntimeError('parser bug')" in result.message
    assert applied == [] and sample(registry, "docker_exporter_config_last_reload_successful") == 0
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None  # the traceback goes to the log


def _fail(_config: Config, _web: WebConfig) -> None:
    raise AssertionError("a refused reload must not apply anything")


# ------------------------------------------------------------------------------------- remediation state


async def test_a_run_in_progress_keeps_the_config_it_started_with(app_factory: AppFactory, tmp_path: Path) -> None:
    _client, service, _clock = await app_factory(RecordedEngine("bookworm"), actions=FREE_DISK, routes=ROUTE)
    await service.poller.poll_once()
    run = service.begin("free-disk", "manual", (), dry_run=True)
    assert run is not None
    changed = {"free-disk": {"type": "prune_dangling", "min_age": "0s"}}
    service.reconfigure(make_config(tmp_path, actions=changed, routes=ROUTE).remediation)
    finished = await service.run_to_completion(run)
    assert finished.plan is not None
    assert (finished.plan.type, finished.plan.target_avail_ratio) == ("free_space", 0.3)
    assert service.describe()["actions"][0]["type"] == "prune_dangling"  # new runs use the new config


async def test_a_run_of_a_removed_action_still_ends_and_is_recorded(app_factory: AppFactory, tmp_path: Path) -> None:
    _client, service, _clock = await app_factory(actions=FREE_DISK, routes=ROUTE)
    run = service.begin("free-disk", "manual", (), dry_run=False)
    assert run is not None
    service.reconfigure(make_config(tmp_path, actions={"other": {"type": "prune_dangling"}}, routes=[]).remediation)
    finished = await service.run_to_completion(run)
    assert finished.result == "failure" and "engine unreachable" in finished.detail  # NoEngine: no engine at all
    assert [r["action"] for r in service.history] == ["free-disk"]
    assert not service.executor.is_running("free-disk")


async def test_cooldowns_survive_for_kept_actions_and_are_dropped_for_removed_ones(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    both = {**FREE_DISK, "dangling": {"type": "prune_dangling"}}
    _client, service, clock = await app_factory(actions=both, routes=ROUTE)
    service.last_started.update({"free-disk": clock.now, "dangling": clock.now})
    service.reconfigure(make_config(tmp_path, actions=FREE_DISK, routes=ROUTE).remediation)
    assert service.last_started == {"free-disk": clock.now}
    assert service.in_cooldown("free-disk", service.config.routes[0])


async def test_new_actions_get_metric_series_and_listing(app_factory: AppFactory, tmp_path: Path) -> None:
    _client, service, _clock = await app_factory(actions=FREE_DISK, routes=ROUTE)

    def series(metric: Any) -> set[tuple[str, str]]:
        """(name, action) of every sample the metric exposes (collect() creates no series)."""
        return {(s.name, s.labels["action"]) for family in metric.collect() for s in family.samples}

    assert ("docker_remediation_runs_total", "keep-two") not in series(service.metrics.runs)
    added = {**FREE_DISK, "keep-two": {"type": "keep_last", "keep": 2}}
    service.reconfigure(make_config(tmp_path, actions=added, routes=ROUTE).remediation)
    assert ("docker_remediation_runs_total", "keep-two") in series(service.metrics.runs)
    assert ("docker_remediation_running", "keep-two") in series(service.metrics.running)
    assert [a["name"] for a in service.describe()["actions"]] == ["free-disk", "keep-two"]


def schedule_tasks() -> dict[str, asyncio.Task[Any]]:
    return {t.get_name(): t for t in asyncio.all_tasks() if t.get_name().startswith("schedule-") and not t.done()}


async def test_schedules_keep_their_timer_unless_their_interval_changes(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    actions = {
        "hourly": {"type": "prune_dangling", "schedule": "1h"},
        "daily": {"type": "prune_dangling", "schedule": "1d"},
        "gone": {"type": "prune_dangling", "schedule": "1h"},
    }
    _client, service, _clock = await app_factory(actions=actions, routes=[])
    before = schedule_tasks()
    assert sorted(before) == ["schedule-daily", "schedule-gone", "schedule-hourly"]
    changed: dict[str, dict[str, Any]] = {
        "hourly": {"type": "prune_dangling", "schedule": "1h", "max_deletions": 5},  # interval unchanged
        "daily": {"type": "prune_dangling", "schedule": "12h"},
        "new": {"type": "prune_dangling", "schedule": "1h"},
    }
    service.reconfigure(make_config(tmp_path, actions=changed, routes=[]).remediation)
    await asyncio.sleep(0)  # let the cancelled timers finish
    after = schedule_tasks()
    assert sorted(after) == ["schedule-daily", "schedule-hourly", "schedule-new"]
    assert after["schedule-hourly"] is before["schedule-hourly"]
    assert after["schedule-daily"] is not before["schedule-daily"]
    assert before["schedule-gone"].cancelled()


async def test_rotated_credentials_apply_to_the_next_request(app_factory: AppFactory, tmp_path: Path) -> None:
    client, service, _clock = await app_factory(actions=FREE_DISK, routes=ROUTE)
    assert (await client.get("/api/v1/actions", headers=BEARER)).status == 200
    rotated = make_config(tmp_path, actions=FREE_DISK, routes=ROUTE, auth={"bearer_token": "rotated"})
    service.reconfigure(rotated.remediation)
    assert (await client.get("/api/v1/actions", headers={"Authorization": f"Bearer {TOKEN}"})).status == 401
    assert (await client.get("/api/v1/actions", headers={"Authorization": "Bearer rotated"})).status == 200


# ------------------------------------------------------------------------------------- the endpoint


async def app_client(aiohttp_client: Any, tmp_path: Path, *, lifecycle: bool) -> Any:
    data = {"state": {"path": str(tmp_path / "state.json")}, "filesystem": {"path": str(tmp_path)}}
    config_file = write(tmp_path / "config.yml", data)
    web_file = write(tmp_path / "web.yml", {})
    app = create_app(
        parse_config(data),
        docker_host=None,
        engine=RecordedEngine("bookworm"),
        reload=ReloadSource(str(config_file), str(web_file), enable_lifecycle=lifecycle),
    )
    return await aiohttp_client(app)


async def test_the_reload_endpoint_is_403_without_the_lifecycle_flag(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await app_client(aiohttp_client, tmp_path, lifecycle=False)
    for method in ("POST", "PUT"):
        response = await client.request(method, "/-/reload")
        assert (response.status, await response.text()) == (403, "Lifecycle API is not enabled.\n")
    assert (await client.get("/-/reload")).status == 405


async def test_the_reload_endpoint_answers_200_or_500_with_the_reason(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await app_client(aiohttp_client, tmp_path, lifecycle=True)
    write(tmp_path / "web.yml", {"http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    response = await client.post("/-/reload")
    assert response.status == 200
    assert (await client.get("/-/healthy")).headers.get("X-Frame-Options") == "deny"  # headers apply live

    write(
        tmp_path / "config.yml", {"state": {"path": str(tmp_path / "state.json")}, "metrics": {"max_image_series": -1}}
    )
    response = await client.put("/-/reload")
    assert response.status == 500
    assert "metrics.max_image_series" in await response.text()
    metrics = await (await client.get("/metrics")).text()
    assert "docker_exporter_config_last_reload_successful 0.0" in metrics


async def test_the_reload_endpoint_answers_500_for_a_deeply_nested_config(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await app_client(aiohttp_client, tmp_path, lifecycle=True)
    (tmp_path / "config.yml").write_text("{a: " * 5000 + "1" + "}" * 5000 + "\n")
    response = await client.post("/-/reload")
    assert response.status == 500
    assert "line 1: nesting deeper than 100 levels" in await response.text()
    metrics = await (await client.get("/metrics")).text()
    assert "docker_exporter_config_last_reload_successful 0.0" in metrics


async def test_the_reload_endpoint_refuses_what_another_site_can_make_a_browser_send(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """An HTML form on any page can POST to `/-/reload` through an operator's browser: refused like a
    cross-site request to the remediation endpoints, while `curl -X POST` (no body, no Content-Type) reloads."""
    client = await app_client(aiohttp_client, tmp_path, lifecycle=True)
    # a config a reload would refuse: any refused request that reloaded anyway shows as a failed reload
    write(tmp_path / "config.yml", {"state": {"path": str(tmp_path / "state.json")}, "poll": {"interval": "x"}})
    form = await client.post("/-/reload", data={"x": "1"})  # what a <form method=post> sends
    assert form.status == 415
    assert "application/x-www-form-urlencoded" in await form.text()
    text = await client.post("/-/reload", data=b"x", headers={"Content-Type": "text/plain"})
    assert text.status == 415
    foreign = await client.put("/-/reload", headers={"Origin": "https://attacker.example"})
    assert foreign.status == 403
    assert "https://attacker.example" in await foreign.text()
    metrics = await (await client.get("/metrics")).text()
    assert "docker_exporter_config_last_reload_successful 1.0" in metrics  # none of them reloaded

    write(tmp_path / "config.yml", {"state": {"path": str(tmp_path / "state.json")}})

    # what `curl -X POST http://…/-/reload` sends: no Content-Type, no Content-Length, no body
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /-/reload HTTP/1.1\r\nHost: exporter\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200 "), status_line
    same_origin = await client.post("/-/reload", headers={"Origin": f"http://{client.host}:{client.port}"})
    assert same_origin.status == 200
