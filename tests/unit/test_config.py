import json
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exporter.cli import main
from exporter.config import (
    BuildCacheAction,
    ConfigError,
    FreeSpaceAction,
    SecretFileError,
    checks,
    load_config,
    parse_config,
    read_secret_file,
)
from exporter.config.schema import SCHEMA_PATH, render
from exporter.config.schema import main as schema_main
from exporter.core.schedule import Cron, Interval
from exporter.core.units import format_duration, parse_duration, parse_duration_ms
from exporter.web.webconfig import WebConfig, load_web_config, parse_web_config

FULL = """
docker: {host: unix:///run/x.sock, timeout: 10s}
poll: {interval: 15s, disk_usage_interval: 10m}
filesystem: {path: /srv/docker}
metrics: {per_image: false, max_image_series: 50}
state: {path: /tmp/state.json}
remediation:
  enabled: true
  dry_run: true
  auth: {bearer_token: s3cret}
  scope: ['host="node-1"']
  protect:
    references: ["*:production", "registry.example.com/base/*"]
    labels: ["keep=true", "pinned"]
  audit_log: /tmp/audit.jsonl
  actions:
    clean-dangling: {type: prune_dangling, min_age: 1h}
    keep-five: {type: keep_last, keep: 5, min_age: 1h}
    free-disk: {type: free_space, target_avail_ratio: 0.3, min_age: 10m, max_deletions: 500}
    builder: {type: build_cache, keep_storage: 5GB, min_age: 24h}
    weekly: {type: prune_unused, min_age: 720h, schedule: 168h}
  routes:
    - matchers: ['alertname="DockerDiskPressure"', 'severity=~"warning|critical"']
      action: free-disk
      cooldown: 10m
"""


def test_full_example_parses() -> None:
    config = parse_config(yaml.safe_load(FULL))
    assert config.docker.timeout == 10
    assert config.poll.disk_usage_interval == 600
    assert not config.metrics.per_image
    r = config.remediation
    assert r.enabled and r.dry_run and r.auth.bearer_token == "s3cret"
    free_disk, builder = r.actions["free-disk"], r.actions["builder"]
    assert isinstance(free_disk, FreeSpaceAction) and free_disk.target_avail_ratio == 0.3
    assert free_disk.max_deletions == 500 and free_disk.name == "free-disk"
    assert isinstance(builder, BuildCacheAction) and builder.keep_storage == 5_000_000_000
    assert r.actions["weekly"].schedule == Interval(168 * 3600)
    assert r.routes[0].action == "free-disk" and r.routes[0].cooldown == 600
    assert r.routes[0].matchers[1].matches({"severity": "critical"})
    assert r.protect.reference_rule("app:production") == "*:production"
    assert r.protect.reference_rule("app:staging") is None
    assert r.protect.label_rule({"keep": "true"}) == "keep=true"
    assert r.protect.label_rule({"keep": "false"}) is None
    assert r.protect.label_rule({"pinned": ""}) == "pinned"
    assert not r.protect.local_only  # off by default (issue 12 #6: build hosts)


def test_defaults_have_remediation_off() -> None:
    config = parse_config(None)
    assert not config.remediation.enabled
    assert config.poll.interval == 30 and config.metrics.max_image_series == 2000


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"pol": {}}, "pol: unknown key"),
        ({"poll": {"interval": "30"}}, "poll.interval: expected a duration"),
        ({"poll": {"interval": "0s"}}, "poll.interval: must be at least 1s"),
        ({"metrics": {"max_image_series": -1}}, "metrics.max_image_series: must be >= 0"),
        ({"metrics": {"per_image": "yes"}}, "metrics.per_image: expected true or false"),
        ({"docker": []}, "docker: must be a mapping"),
        ({"remediation": {"enabled": True}}, "remediation.auth: is required when remediation is enabled"),
        (
            {"remediation": {"actions": {"x": {"type": "nuke"}}}},
            "remediation.actions.x.type: must be one of",
        ),
        ({"remediation": {"actions": {"x": {"type": "keep_last"}}}}, "remediation.actions.x.keep: is required"),
        (
            {"remediation": {"actions": {"x": {"type": "free_space", "target_avail_ratio": 1.5}}}},
            "remediation.actions.x.target_avail_ratio: must be between 0 and 1",
        ),
        (
            {"remediation": {"actions": {"x": {"type": "prune_dangling", "keep": 3}}}},
            "remediation.actions.x.keep: unknown key",
        ),
        ({"remediation": {"routes": [{"matchers": ['a="b"'], "action": "nope"}]}}, "routes[0].action: names no action"),
        ({"remediation": {"routes": [{"action": "x"}]}}, "remediation.routes[0].matchers: is required"),
        ({"remediation": {"scope": ["host"]}}, "remediation.scope[0]: not a matcher"),
        ({"remediation": {"auth": {"bearer_token_file": "/nonexistent/x"}}}, "bearer_token_file: cannot read"),
        (
            {"remediation": {"auth": {"bearer_token": "a", "bearer_token_file": "/etc/hostname"}}},
            "give either bearer_token or bearer_token_file",
        ),
        ({"remediation": {"relay": {"url_template": "http://x/"}}}, "remediation.relay.url_template: must contain"),
    ],
)
def test_errors_name_the_key(doc: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"poll": {"interval": "x", "bogus": 1}, "metrics": {"per_image": 3}})
    assert len(err.value.problems) == 3


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "pw").write_text("pw\n")
    config = parse_config(
        {
            "remediation": {
                "enabled": True,
                "auth": {
                    "bearer_token_file": str(tmp_path / "token"),
                    "basic_auth": {"username": "am", "password_file": str(tmp_path / "pw")},
                },
            }
        }
    )
    assert config.remediation.auth.bearer_token == "tok"
    assert config.remediation.auth.basic_auth is not None
    assert config.remediation.auth.basic_auth.password == "pw"


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("poll: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_check_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yml"
    good.write_text(FULL)
    assert main(["--config.file", str(good), "--config.check"]) == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("metrics: {max_image_series: many}\n")
    assert main(["--config.file", str(bad), "--config.check"]) == 1
    assert "metrics.max_image_series" in capsys.readouterr().err


def test_config_check_lists_every_kind_of_problem_in_one_round(tmp_path: Path) -> None:
    """Field errors, a misspelt route action next to a bad matcher and unwritable files, in one run."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be: unwritable below it, for root too\n")
    config = tmp_path / "config.yml"
    config.write_text(
        f"""
poll: {{interval: 15s, bogus: 1}}
state: {{path: {blocker}/state.json}}
remediation:
  enabled: true
  auth: {{bearer_token: s3cret}}
  audit_log: {blocker}/audit.jsonl
  actions:
    free-disk: {{type: free_space, target_avail_ratio: 1.5}}
  routes:
    - {{matchers: ['severity=~"("'], action: free-disk}}
    - {{matchers: ['alertname="DiskFull"'], action: free_disk}}
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("- ")]
    expected = [
        "- poll.bogus: unknown key",
        "- remediation.actions.free-disk.target_avail_ratio: must be between 0 and 1",
        "- remediation.routes[0].matchers[0]: ",
        "- remediation.routes[1].action: names no action under remediation.actions: 'free_disk'",
        f"- state.path: cannot be created: {blocker} is not a directory",
        f"- remediation.audit_log: cannot be created: {blocker} is not a directory",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, done.stderr)
    assert len(lines) == len(expected), done.stderr


def test_route_rules_are_reported_whatever_else_is_wrong() -> None:
    """A route's cross-reference and its matcher rule do not wait for the route's or the actions' own errors."""
    doc = {
        "remediation": {
            "actions": {"x": {"type": "prune_unsed"}},  # invalid itself: its name still counts
            "routes": [
                {"matchers": ['alertname=""'], "action": "x", "cooldown": "soon"},
                {"action": "x", "cooldown": "soon"},
                {"matchers": ['a=~"("'], "action": "y"},
                {"matchers": ['severity="page"'], "action": "x", "match_any_alert": "maybe"},
            ],
        }
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    keys = [p.split(": ", 1)[0] for p in err.value.problems]
    assert sorted(keys) == sorted(
        [
            "remediation.actions.x.type",
            "remediation.routes[0].cooldown",
            "remediation.routes[0].matchers",  # matches every alert
            "remediation.routes[1].cooldown",
            "remediation.routes[1].matchers",  # is required
            "remediation.routes[2].matchers[0]",
            "remediation.routes[2].action",  # names no action
            "remediation.routes[3].match_any_alert",
        ]
    ), err.value.problems
    assert "remediation.routes[0].matchers: needs a matcher that requires a label value" in "\n".join(
        err.value.problems
    )
    assert "remediation.routes[1].matchers: is required" in err.value.problems


def test_auth_and_relay_rules_are_reported_with_their_sections_other_errors(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    doc = {
        "remediation": {
            "auth": {"bearer_token": "t", "bearer_token_file": str(token), "basic_auth": {"username": 3}},
            "relay": {"enabled": True, "url_template": "http://x/", "timeout": "forever"},
        }
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    keys = sorted(p.split(": ", 1)[0] for p in err.value.problems)
    assert keys == [
        "remediation.auth.basic_auth.username",
        "remediation.auth.bearer_token",
        "remediation.relay.host_regex",
        "remediation.relay.self_names",
        "remediation.relay.timeout",
        "remediation.relay.url_template",
    ], err.value.problems
    assert "remediation.auth.bearer_token: give either bearer_token or bearer_token_file, not both" in (
        err.value.problems
    )
    assert "remediation.relay.url_template: must contain {host}" in err.value.problems
    # a peer map that is itself invalid is not judged as missing
    with pytest.raises(ConfigError) as err:
        parse_config({"remediation": {"relay": {"enabled": True, "self_names": ["a"], "peers": {"b": "ftp://b"}}}})
    assert err.value.problems == ["remediation.relay.peers.b: must be an http(s) URL, got 'ftp://b'"]


def _problems_as(uid: int | None, config: dict[str, Any]) -> list[str]:
    """`parse_config(config)`'s problems as this user, or (root, whose writes go through file modes) as `uid`
    in a forked child: the check is about the user the exporter runs as."""
    if uid is None:
        with pytest.raises(ConfigError) as err:
            parse_config(config)
        return list(err.value.problems)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and never returns
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                parse_config(config)
                problems: list[str] = []
            except ConfigError as exc:
                problems = list(exc.problems)
            os.write(write, json.dumps(problems).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return list(json.loads(data))


def test_unwritable_files_and_folders_are_named() -> None:
    nobody = 65534 if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="die-unwritable-", dir="/tmp"))  # reachable by any user (tmp_path is not)
    try:
        top.chmod(0o755)
        locked = top / "locked"
        locked.mkdir()
        (top / "audit.jsonl").write_text("")
        (top / "audit.jsonl").chmod(0o444)
        locked.chmod(0o555)
        problems = _problems_as(
            nobody,
            {
                "state": {"path": str(locked / "sub" / "state.json")},
                "remediation": {"enabled": True, "auth": {"bearer_token": "t"}, "audit_log": str(top / "audit.jsonl")},
            },
        )
        uid = os.getuid() if nobody is None else nobody
        assert problems == [
            f"state.path: cannot be written: the folder {locked} is not writable by this user (uid {uid}) "
            "(last-used and arrival times could not be saved)",
            f"remediation.audit_log: {top / 'audit.jsonl'} is not writable by this user (uid {uid}) "
            "(every remediation run would fail)",
        ]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_paths_are_checked_only_where_the_exporter_writes(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    # remediation off: its audit log is never opened
    parse_config({"state": {"path": str(tmp_path / "state.json")}, "remediation": {"audit_log": str(blocker / "a")}})
    with pytest.raises(ConfigError) as err:
        parse_config({"state": {"path": str(tmp_path)}})
    assert err.value.problems == [
        f"state.path: {tmp_path} is a directory (last-used and arrival times could not be saved)"
    ]
    existing = tmp_path / "state.json"
    existing.write_text("{}")
    assert parse_config({"state": {"path": str(existing)}}).state.path == str(existing)
    assert not (tmp_path / "missing" / "x.json").exists()
    parse_config({"state": {"path": str(tmp_path / "missing" / "x.json")}})
    assert not (tmp_path / "missing").exists()  # checked, not created


def test_default_paths_are_left_to_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only paths written in the file are checked: the defaults are what the image and the chart prepare."""
    monkeypatch.setattr(checks, "unwritable", lambda path, *, replaced: f"{path} refused")
    config = parse_config({"remediation": {"enabled": True, "auth": {"bearer_token": "t"}}})
    assert config.remediation.audit_log == "/var/lib/docker-image-exporter/audit.jsonl"
    with pytest.raises(ConfigError) as err:
        parse_config({"state": {"path": "/srv/state.json"}})
    assert err.value.problems == [
        "state.path: /srv/state.json refused (last-used and arrival times could not be saved)"
    ]


def test_make_run_config_is_valid() -> None:
    # the compose example's config is checked in test_compose.py, with its container paths mapped
    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "config.yaml")
    assert not config.remediation.enabled  # `make run` only reads


# ------------------------------------------------------------------------------------- --web.config.file


def _web(tmp_path: Path, tls: dict[str, object] | None = None, **top: object) -> dict[str, object]:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    doc: dict[str, object] = dict(top)
    if tls is not None:
        doc["tls_server_config"] = {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem"), **tls}
    return doc


def test_no_web_config_is_plain_http() -> None:
    assert load_web_config(None) == WebConfig()


def test_web_config_accepts_the_exporter_toolkit_subset(tmp_path: Path) -> None:
    doc = _web(
        tmp_path,
        {
            "client_auth_type": "VerifyClientCertIfGiven",
            "client_ca_file": str(tmp_path / "c.pem"),
            "max_version": "TLS13",
        },
        http_server_config={"headers": {"X-Content-Type-Options": "nosniff"}},
    )
    web = parse_web_config(doc)
    assert web.tls is not None and web.tls.client_auth_type == "VerifyClientCertIfGiven"
    assert web.tls.min_version == "TLS12"  # exporter-toolkit's default
    assert web.headers == (("X-Content-Type-Options", "nosniff"),)


@pytest.mark.parametrize(
    ("tls", "top", "expected"),
    [
        ({"client_auth_type": "RequireAndVerifyClientCert"}, {}, "tls_server_config.client_ca_file: is required"),
        ({"client_auth_type": "RequireAnyClientCert"}, {}, "tls_server_config.client_auth_type: RequireAnyClientCert"),
        ({"client_auth_type": "Maybe"}, {}, "tls_server_config.client_auth_type: must be one of"),
        ({"min_version": "TLS13", "max_version": "TLS12"}, {}, "tls_server_config.max_version: TLS12 is below"),
        ({"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}, {}, "tls_server_config.cipher_suites: is not supported"),
        ({"key_file": "/nonexistent/k.pem"}, {}, "tls_server_config.key_file: cannot read /nonexistent/k.pem"),
        ({"certfile": "typo"}, {}, "tls_server_config.certfile: unknown key"),
        (None, {"basic_auth_users": {"p": "h"}}, "basic_auth_users.p: is not a bcrypt hash"),
        (None, {"http_server_config": {"headers": {"Server": "x"}}}, "http_server_config.headers.Server: not settable"),
        (None, {"http_server_config": {"http2": True}}, "http_server_config.http2: is not supported"),
    ],
)
def test_web_config_errors_name_the_key(
    tmp_path: Path, tls: dict[str, object] | None, top: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_web_config(_web(tmp_path, tls, **top))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert len(info.value.problems) == 1, info.value.problems  # one mistake, one message


def test_relay_tls_config_is_checked(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    base = {"enabled": True, "self_names": ["a"], "host_regex": "[a-z]+"}
    ok = parse_config({"remediation": {"relay": {**base, "tls_config": {"ca_file": str(tmp_path / "ca.crt")}}}})
    assert ok.remediation.relay.tls.ca_file == str(tmp_path / "ca.crt")
    with pytest.raises(ConfigError) as info:
        parse_config({"remediation": {"relay": {**base, "tls_config": {"cert_file": str(tmp_path / "ca.crt")}}}})
    assert info.value.problems == ["remediation.relay.tls_config.key_file: cert_file and key_file go together"]
    with pytest.raises(ConfigError, match=r"remediation\.relay\.tls_config\.ca_file: cannot read /nope"):
        parse_config({"remediation": {"relay": {**base, "tls_config": {"ca_file": "/nope"}}}})


# ------------------------------------------------------------------------- strictness (issues 10 and 13)

TOKEN = {"bearer_token": "s3cret"}


def _route(**route: object) -> dict[str, object]:
    return {
        "remediation": {
            "auth": TOKEN,
            "actions": {"a": {"type": "prune_dangling"}},
            "routes": [{"action": "a", **route}],
        }
    }


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"docker": {"timeout": "300y"}}, "docker.timeout: must be at most 1h"),
        ({"docker": {"timeout": "30m1h"}}, "docker.timeout: expected a duration"),
        ({"docker": {"timeout": "1.5h"}}, "docker.timeout: expected a duration"),
        ({"docker": {"timeout": 30}}, "docker.timeout: expected a duration"),  # a bare number is not seconds
        ({"poll": {"interval": "2w"}}, "poll.interval: must be at most 1w"),
        ({"poll": {"debounce": "1h"}}, "poll.debounce: must be at most 1m"),
        ({"remediation": {"max_body_bytes": "5G"}}, "remediation.max_body_bytes: ambiguous size unit"),
        ({"remediation": {"max_body_bytes": "1GiB"}}, "remediation.max_body_bytes: must be at most 64MiB"),
        (
            {"remediation": {"actions": {"keep-five": {"type": "keep_last", "keep": 0}}}},
            "remediation.actions.keep-five.keep: must be >= 1",
        ),
        (
            {"remediation": {"actions": {"b": {"type": "keep_last", "keep": 2, "keep_storage": "1GB"}}}},
            "remediation.actions.b.keep_storage: unknown key",
        ),
        ({"remediation": {"actions": {"a": {"type": "prune_dangling", "name": "b"}}}}, "remediation.actions.a.name"),
        (
            {"remediation": {"actions": {"a": {"type": "prune_unused", "schedule": "10s"}}}},
            "remediation.actions.a.schedule: an interval schedule must be at least 1m",
        ),
        ({"remediation": {"auth": {"bearer_token": ""}}}, "remediation.auth.bearer_token: must not be empty"),
        ({"remediation": {"auth": {"bearer_token": "  "}}}, "remediation.auth.bearer_token: must not be empty"),
        (
            {"remediation": {"auth": {"basic_auth": {"username": "", "password": "pw"}}}},
            "remediation.auth.basic_auth.username: must not be empty",
        ),
        (
            {"remediation": {"auth": {"basic_auth": {"username": "am", "password": ""}}}},
            "remediation.auth.basic_auth.password: must not be empty",
        ),
        (
            {"remediation": {"auth": {"basic_auth": {"username": "am"}}}},
            "remediation.auth.basic_auth.password: is required",
        ),
        (_route(matchers=[]), "remediation.routes[0].matchers: needs a matcher that requires a label value"),
        (_route(), "remediation.routes[0].matchers: is required"),
        (_route(matchers=['severity!="info"']), "remediation.routes[0].matchers: needs a matcher"),
        (_route(matchers=['alertname=~".*"']), "remediation.routes[0].matchers: needs a matcher"),
        (_route(matchers=['alertname=""']), "remediation.routes[0].matchers: needs a matcher"),
        ({"remediation": {"protect": {"references": [" *:prod"]}}}, "remediation.protect.references[0]: ' *:prod'"),
        ({"remediation": {"protect": {"labels": ["keep = true"]}}}, "remediation.protect.labels[0]: 'keep = true'"),
        ({"remediation": {"protect": {"labels": ["keep= true"]}}}, "remediation.protect.labels[0]: 'keep= true'"),
        ({"remediation": {"protect": {"labels": [""]}}}, "remediation.protect.labels[0]: ''"),
        ({"remediation": {"relay": {"peers": {"a": "ftp://x"}}}}, "remediation.relay.peers.a: must be an http(s) URL"),
        ({"remediation": {"relay": {"host_regex": "("}}}, "remediation.relay.host_regex: bad regular expression"),
        ({"remediation": {"relay": {"enabled": True}}}, "remediation.relay.self_names: is required"),
        ({"remediation": {"relay": {"self_names": ["${DIE_SURELY_UNSET_VAR}"]}}}, "remediation.relay.self_names"),
        ("just text", "<top level>: must be a mapping"),
    ],
)
def test_refused_with_the_key_named(doc: object, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"remediation": {"auth": {"bearer_token": 123456789}}})
    assert "123456789" not in str(err.value)
    assert err.value.problems[0].startswith("remediation.auth.bearer_token: expected a string")


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_secret_files_are_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "token").write_text(content)
    (tmp_path / "pw").write_text(content)
    with pytest.raises(ConfigError) as err:
        parse_config({"remediation": {"auth": {"bearer_token_file": str(tmp_path / "token")}}})
    assert err.value.problems == [
        f"remediation.auth.bearer_token_file: {tmp_path / 'token'} is empty: an empty secret would let anybody in"
    ]
    with pytest.raises(ConfigError, match=r"remediation\.auth\.basic_auth\.password_file: .* is empty"):
        parse_config(
            {"remediation": {"auth": {"basic_auth": {"username": "u", "password_file": str(tmp_path / "pw")}}}}
        )
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret_file(tmp_path / "token")


def test_read_secret_file_strips_and_names_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  tok\n")
    assert read_secret_file(tmp_path / "t") == "tok"
    with pytest.raises(SecretFileError, match=r"cannot read .*/missing"):
        read_secret_file(tmp_path / "missing")


def test_secrets_stay_out_of_repr() -> None:
    config = parse_config(
        {"remediation": {"auth": {"bearer_token": "s3cret", "basic_auth": {"username": "u", "password": "pw99"}}}}
    )
    assert "s3cret" not in repr(config) and "pw99" not in repr(config)


def test_a_route_for_every_alert_needs_the_explicit_opt_in() -> None:
    config = parse_config(_route(matchers=[], match_any_alert=True))
    assert config.remediation.routes[0].match_any_alert and config.remediation.routes[0].matchers == ()
    config = parse_config(_route(matchers=['alertname=~"Docker.+"', 'severity!="info"']))
    assert config.remediation.routes[0].matchers[0].requires_label()


def test_durations_and_sizes_at_their_bounds() -> None:
    config = parse_config(
        {
            "docker": {"timeout": "1h", "disk_usage_timeout": "59m59s999ms"},
            "poll": {"debounce": 0, "disk_usage_min_interval": "0s", "interval": "1w"},
            "remediation": {
                "max_body_bytes": "64MiB",
                "actions": {"b": {"type": "build_cache", "keep_storage": "5Gi"}},
            },
        }
    )
    assert config.docker.timeout == 3600 and config.docker.disk_usage_timeout == 3599.999
    assert config.poll.debounce == 0 and config.poll.interval == 604800
    assert config.remediation.max_body_bytes == 64 * 2**20
    builder = config.remediation.actions["b"]
    assert isinstance(builder, BuildCacheAction) and builder.keep_storage == 5 * 2**30


def test_null_sections_and_keys_mean_the_defaults() -> None:
    config = parse_config({"poll": None, "remediation": {"protect": None, "dry_run": None}})
    assert config.poll.interval == 30 and not config.remediation.dry_run and not config.remediation.protect.local_only


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(text)
    return path


def test_duplicate_keys_are_refused_with_key_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "remediation:\n  dry_run: true\n  enabled: false\n  dry_run: false\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [f"--config.file: {path} line 4: duplicate key 'dry_run' (first given on line 2)"]


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = """
remediation:
  actions:
    base: &defaults {type: prune_unused, min_age: 48h, max_deletions: 5}
    weekly: {<<: *defaults, schedule: 1w}
"""
    weekly = load_config(_write(tmp_path, text)).remediation.actions["weekly"]
    assert weekly.min_age == 48 * 3600 and weekly.max_deletions == 5 and weekly.schedule == Interval(604800)


BILLION_LAUGHS = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    path = _write(tmp_path, BILLION_LAUGHS)
    assert path.stat().st_size < 600
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"aliases expand to more than 100000 nodes"):
            load_config(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_recursive_alias_and_huge_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recursive alias"):
        load_config(_write(tmp_path, "poll: &p {interval: *p}\n"))
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(_write(tmp_path, "# " + "x" * (1 << 20) + "\n"))


def test_config_check_runs_the_start_up_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = _write(tmp_path, BILLION_LAUGHS)
    assert main(["--config.file", str(bomb), "--config.check"]) == 1
    assert "aliases expand" in capsys.readouterr().err
    (tmp_path / "token").write_text("\n")
    empty = tmp_path / "empty-token.yml"
    empty.write_text(f"remediation: {{enabled: true, auth: {{bearer_token_file: {tmp_path / 'token'}}}}}\n")
    assert main(["--config.file", str(empty), "--config.check"]) == 1
    assert "remediation.auth.bearer_token_file" in capsys.readouterr().err
    good = tmp_path / "good.yml"
    good.write_text(FULL)
    assert main(["--config.file", str(good), "--config.check"]) == 0


# ------------------------------------------------------------------------------------------ JSON Schema


def test_committed_schema_matches_the_models() -> None:
    assert SCHEMA_PATH.read_text() == render(), "run: python -m exporter.config.schema"
    assert schema_main(["--check"]) == 0


def test_schema_accepts_the_examples_and_refuses_what_the_loader_refuses() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    root = Path(__file__).resolve().parents[2]
    examples = (root / "examples" / "config.yaml", root / "examples" / "compose" / "exporter.yml")
    for doc in (yaml.safe_load(FULL), *(yaml.safe_load(p.read_text()) for p in examples), _route(match_any_alert=True)):
        jsonschema.validate(doc, schema)
    for bad in (
        {"poll": {"interval": "30m1h"}},
        {"poll": {"intervall": "30s"}},
        {"remediation": {"actions": {"x": {"type": "prune_dangling", "keep": 3}}}},
        {"remediation": {"actions": {"x": {"type": "keep_last"}}}},
        _route(matchers=[]),
        _route(),
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ConfigError):
            parse_config(bad)


# ------------------------------------------------------------------------------------- property tests

_UNITS = ("y", "w", "d", "h", "m", "s", "ms")
_MS = {"y": 365 * 86400_000, "w": 7 * 86400_000, "d": 86400_000, "h": 3600_000, "m": 60_000, "s": 1000, "ms": 1}


@given(st.lists(st.tuples(st.sampled_from(_UNITS), st.integers(0, 10**6)), min_size=1, unique_by=lambda t: t[0]))
def test_valid_durations_round_trip(parts: list[tuple[str, int]]) -> None:
    parts.sort(key=lambda p: _UNITS.index(p[0]))
    text = "".join(f"{n}{unit}" for unit, n in parts)
    assert parse_duration_ms(text) == sum(n * _MS[unit] for unit, n in parts)
    seconds = parse_duration(text)
    if seconds < 2**41:  # beyond that a float second no longer holds every millisecond (ulp > 0.5 ms)
        assert parse_duration(format_duration(seconds)) == seconds
    if len(parts) > 1:  # Prometheus wants the largest unit first
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration("".join(f"{n}{unit}" for unit, n in reversed(parts)))


@given(
    st.one_of(st.text(max_size=20), st.text(alphabet="0123456789.ywdhms -", max_size=12), st.integers(), st.floats())
)
def test_any_duration_input_is_accepted_or_a_config_error(value: object) -> None:
    try:
        config = parse_config({"poll": {"debounce": value}})
    except ConfigError as exc:
        assert all(p.startswith("poll.debounce: ") for p in exc.problems), exc.problems
    else:
        assert 0 <= config.poll.debounce <= 60


_YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_SECTION_KEYS = st.sampled_from(["docker", "poll", "metrics", "state", "remediation", "timeout", "interval", "x"])


@given(st.dictionaries(_SECTION_KEYS, _YAML_VALUES | st.dictionaries(_SECTION_KEYS, _YAML_VALUES), max_size=4))
def test_any_document_is_accepted_or_a_config_error(doc: dict[str, object]) -> None:
    try:
        parse_config(doc)
    except ConfigError as exc:
        assert exc.problems and all(": " in p for p in exc.problems), exc.problems


def test_cross_key_problems_are_reported_with_the_rest() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "poll": {"interval": "x"},
                "remediation": {
                    "enabled": True,
                    "auth": {},
                    "actions": {"a": {"type": "prune_dangling"}},
                    "routes": [{"matchers": ['a="b"'], "action": "a"}, {"matchers": ['a="b"'], "action": "nope"}],
                },
            }
        )
    assert [p.split(":")[0] for p in err.value.problems] == [
        "poll.interval",
        "remediation.auth",
        "remediation.routes[1].action",
    ]


def test_config_does_not_import_the_remediation_package() -> None:
    code = "import sys, exporter.config; print(sorted(m for m in sys.modules if m.startswith('exporter.remediation')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_web_config_file_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("http_server_config:\n  headers: {X-Frame-Options: deny}\nhttp_server_config: {}\n")
    with pytest.raises(ConfigError, match=r"--web.config.file: .* line 3: duplicate key 'http_server_config'"):
        load_web_config(path)


# ------------------------------------------------------------------------------------------- schedules


def test_schedule_is_an_interval_or_cron_in_the_remediation_timezone() -> None:
    config = parse_config(
        {
            "remediation": {
                "timezone": "Europe/Berlin",
                "actions": {
                    "weekly": {"type": "prune_unused", "schedule": "0 3 * * SUN"},
                    "hourly": {"type": "prune_dangling", "schedule": "1h"},
                    "manual": {"type": "prune_dangling"},
                },
            }
        }
    )
    actions = config.remediation.actions
    assert actions["weekly"].schedule == Cron("0 3 * * SUN", "Europe/Berlin")
    assert actions["hourly"].schedule == Interval(3600)
    assert actions["manual"].schedule is None
    assert parse_config({}).remediation.timezone == "UTC"
    default_tz = parse_config({"remediation": {"actions": {"w": {"type": "prune_unused", "schedule": "0 3 * * 0"}}}})
    assert default_tz.remediation.actions["w"].schedule == Cron("0 3 * * 0", "UTC")


@pytest.mark.parametrize(
    ("remediation", "problem"),
    [
        ({"timezone": "Mars/Olympus"}, "remediation.timezone: unknown timezone 'Mars/Olympus'"),
        ({"timezone": ""}, "remediation.timezone: expected an IANA timezone name"),
        (
            {"actions": {"a": {"type": "prune_unused", "schedule": "0 0 3 * * SUN"}}},
            "remediation.actions.a.schedule: a cron schedule needs exactly five fields",
        ),
        (
            {"actions": {"a": {"type": "prune_unused", "schedule": "@daily"}}},
            "remediation.actions.a.schedule: @daily is not supported: write the five fields '0 0 * * *' instead",
        ),
        (
            {"actions": {"a": {"type": "prune_unused", "schedule": "61 * * * *"}}},
            "remediation.actions.a.schedule: invalid cron expression",
        ),
        (
            {"actions": {"a": {"type": "prune_unused", "schedule": "91d"}}},
            "remediation.actions.a.schedule: an interval schedule must be at most 90d",
        ),
        ({"actions": {"a": {"type": "prune_unused", "schedule": 3600}}}, "remediation.actions.a.schedule: expected"),
        (
            {"actions": {"a": {"type": "prune_unused", "schedule": "weekly"}}},
            "remediation.actions.a.schedule: expected",
        ),
    ],
)
def test_bad_schedules_and_timezones_stop_startup_naming_the_key(remediation: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"remediation": remediation})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("doc", ["remediation.md", "configuration.md"])
def test_the_sunday_example_in_the_docs_passes_config_check(
    doc: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / doc).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:] if '"0 3 * * SUN"' in b.split("```", 1)[0]]
    assert len(blocks) == 1, f"{doc}: expected one YAML example with schedule '0 3 * * SUN'"
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    path = tmp_path / "sunday.yml"
    path.write_text(blocks[0].replace("/run/secrets/webhook-token", str(token)))
    assert main(["--config.file", str(path), "--config.check"]) == 0, capsys.readouterr().err
    schedule = load_config(str(path)).remediation.actions["weekly"].schedule
    assert schedule == Cron("0 3 * * SUN", "Europe/Berlin")
    thursday_noon = datetime(2026, 11, 26, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    sunday_3am = datetime(2026, 11, 29, 3, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    assert schedule.next_after(thursday_noon) == sunday_3am
