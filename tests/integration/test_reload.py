"""Reload of a real exporter process (issue 13): SIGHUP and `/-/reload` re-read the config and token files.

Each test rewrites the config file of a running exporter and signals it, then reads the outcome the way an
operator does: the actions API, the metrics, the reload gauges and the log. Before the reload existed,
SIGHUP ended the process (exit 129); every test here checks the process is still the one that started.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images

# subject: config reload; the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]

OLD_TOKEN = "old-token-before-rotation"
NEW_TOKEN = "new-token-after-rotation"
SUCCESS = "docker_exporter_config_last_reload_successful"
SUCCESS_AT = "docker_exporter_config_last_reload_success_timestamp_seconds"


def base_config(tmp_path: Path, **remediation: Any) -> dict[str, Any]:
    token_file = tmp_path / "token"
    if not token_file.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        token_file.write_text(OLD_TOKEN + "\n")
    return {
        "state": {"path": str(tmp_path / "state.json")},
        "poll": {"interval": "10m"},
        "remediation": {
            "enabled": True,
            "dry_run": True,
            "auth": {"bearer_token_file": str(token_file)},
            "audit_log": str(tmp_path / "audit.jsonl"),
            "actions": {"clean-dangling": {"type": "prune_dangling"}},
            **remediation,
        },
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def action_names(exp: ExporterProcess, token: str = OLD_TOKEN) -> list[str]:
    status, body = exp.request("GET", "/api/v1/actions", headers=bearer(token))
    assert status == 200, body
    return [a["name"] for a in json.loads(body)["actions"]]


def reload_by_signal(exp: ExporterProcess, config: dict[str, Any]) -> None:
    """Rewrite the config, SIGHUP, and wait until the exporter logged the reload's outcome."""
    logged = exp.logs().count("configuration reloaded") + exp.logs().count("reload failed")
    exp.write_config(config)
    exp.signal(signal.SIGHUP)
    exp.wait_for(
        lambda: (
            not exp.running or exp.logs().count("configuration reloaded") + exp.logs().count("reload failed") > logged
        ),
        timeout=20,
        what="a reload log line",
    )
    if not exp.running:
        pytest.fail(f"SIGHUP ended the exporter with exit code {exp.stop()}:\n{exp.logs(20)}")


def test_sighup_applies_a_good_config_and_keeps_running(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    load_images(dockerd, [ImageSpec(tags=["team/web:1.0"], layers=[Layer.random(16 * 1024, "reload-web")])])
    exp = exporter_factory(dockerd, base_config(tmp_path))
    pid = exp.pid
    assert exp.samples("docker_image_size_bytes"), "per-image series expected before the reload"
    assert exp.sample(SUCCESS) == 1
    started_at = exp.sample(SUCCESS_AT)
    assert started_at is not None and started_at > 0

    config = base_config(
        tmp_path, actions={"clean-dangling": {"type": "prune_dangling"}, "keep-two": {"type": "keep_last", "keep": 2}}
    )
    config["metrics"] = {"per_image": False}
    reload_by_signal(exp, config)

    assert exp.pid == pid and exp.running
    assert action_names(exp) == ["clean-dangling", "keep-two"]
    assert exp.samples("docker_image_size_bytes") == []  # metrics.per_image: false applies to the next scrape
    assert exp.sample("docker_remediation_runs_total", {"action": "keep-two", "trigger": "manual"}) == 0
    assert exp.sample(SUCCESS) == 1
    assert (exp.sample(SUCCESS_AT) or 0) >= started_at
    assert "configuration reloaded" in exp.logs()


def test_sighup_refuses_a_bad_config_and_keeps_the_old_one(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    exp = exporter_factory(dockerd, base_config(tmp_path))
    good_at = exp.sample(SUCCESS_AT)

    invalid = base_config(
        tmp_path, actions={"clean-dangling": {"type": "prune_dangling"}, "keep": {"type": "keep_last"}}
    )
    reload_by_signal(exp, invalid)
    assert exp.sample(SUCCESS) == 0
    assert exp.sample(SUCCESS_AT) == good_at
    assert action_names(exp) == ["clean-dangling"]  # the old config keeps running
    failure = [line for line in exp.logs().splitlines() if "reload failed, keeping the old configuration" in line]
    assert len(failure) == 1 and "level=error" in failure[0]
    assert "remediation.actions.keep.keep" in failure[0], failure[0]

    restart_only = base_config(tmp_path)
    restart_only["state"] = {"path": str(tmp_path / "elsewhere.json")}
    reload_by_signal(exp, restart_only)
    assert exp.sample(SUCCESS) == 0
    assert "state.path cannot change on reload; restart the exporter" in exp.logs()

    reload_by_signal(exp, base_config(tmp_path, actions={"prune-all": {"type": "prune_unused"}}))
    assert exp.sample(SUCCESS) == 1
    assert action_names(exp) == ["prune-all"]


def test_sighup_rereads_a_rotated_token_file(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    exp = exporter_factory(dockerd, base_config(tmp_path))
    assert exp.request("GET", "/api/v1/actions", headers=bearer(NEW_TOKEN))[0] == 401

    (tmp_path / "token").write_text(NEW_TOKEN + "\n")
    reload_by_signal(exp, base_config(tmp_path))
    assert exp.request("GET", "/api/v1/actions", headers=bearer(OLD_TOKEN))[0] == 401
    assert exp.request("GET", "/api/v1/actions", headers=bearer(NEW_TOKEN))[0] == 200

    (tmp_path / "token").write_text("\n")  # an empty secret would let anybody in: refused, the token stays
    reload_by_signal(exp, base_config(tmp_path))
    assert exp.sample(SUCCESS) == 0
    failures = [line for line in exp.logs().splitlines() if "reload failed" in line]
    assert "remediation.auth.bearer_token_file" in failures[-1], failures
    assert exp.request("GET", "/api/v1/actions", headers=bearer(NEW_TOKEN))[0] == 200
    assert exp.request("GET", "/api/v1/actions", headers={"Authorization": "Bearer "})[0] == 401


def test_reload_endpoint_needs_the_lifecycle_flag(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    closed = exporter_factory(dockerd, base_config(tmp_path / "closed"), ready=False)
    status, body = closed.request("POST", "/-/reload")
    assert (status, body) == (403, b"Lifecycle API is not enabled.\n")

    exp = exporter_factory(dockerd, base_config(tmp_path / "open"), extra_args=["--web.enable-lifecycle"], ready=False)
    exp.write_config(base_config(tmp_path / "open", actions={"prune-all": {"type": "prune_unused"}}))
    assert exp.request("POST", "/-/reload")[0] == 200
    assert action_names(exp) == ["prune-all"]

    exp.write_config({**base_config(tmp_path / "open"), "docker": {"host": "tcp://192.0.2.1:2375"}})
    status, body = exp.request("PUT", "/-/reload")
    assert status == 500
    assert b"docker.host cannot change on reload; restart the exporter" in body
    assert action_names(exp) == ["prune-all"]
    assert exp.sample(SUCCESS) == 0


def test_a_deeply_nested_config_fails_the_reload_cleanly_by_signal_and_endpoint(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    exp = exporter_factory(dockerd, base_config(tmp_path), extra_args=["--web.enable-lifecycle"], ready=False)
    good = exp.config_path.read_text()
    deep = "poll: " + "[" * 5000 + "]" * 5000 + "\n"

    exp.config_path.write_text(deep)
    exp.signal(signal.SIGHUP)
    exp.wait_for(lambda: "reload failed" in exp.logs() or not exp.running, timeout=20, what="a reload log line")
    assert exp.running
    [failure] = [line for line in exp.logs().splitlines() if "reload failed, keeping the old configuration" in line]
    assert "line 1: nesting deeper than 100 levels" in failure, failure
    assert "Traceback" not in exp.logs() and "RecursionError" not in exp.logs()
    assert exp.sample(SUCCESS) == 0
    assert action_names(exp) == ["clean-dangling"]  # the old config keeps running

    exp.config_path.write_text(good)
    assert exp.request("POST", "/-/reload")[0] == 200
    assert exp.sample(SUCCESS) == 1
    exp.config_path.write_text(deep)
    status, body = exp.request("POST", "/-/reload")
    assert status == 500
    assert b"line 1: nesting deeper than 100 levels" in body
    assert exp.sample(SUCCESS) == 0
    assert "Traceback" not in exp.logs()
