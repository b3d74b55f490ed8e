from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.config import ConfigError, WebConfig, load_config, load_web_config, parse_config, parse_web_config

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
    assert r.actions["free-disk"].target_avail_ratio == 0.3
    assert r.actions["free-disk"].max_deletions == 500
    assert r.actions["builder"].keep_storage == 5_000_000_000
    assert r.actions["weekly"].schedule == 168 * 3600
    assert r.routes[0].action == "free-disk" and r.routes[0].cooldown == 600
    assert r.routes[0].matchers[1].matches({"severity": "critical"})
    assert r.protect.reference_rule("app:production") == "*:production"
    assert r.protect.reference_rule("app:staging") is None
    assert r.protect.label_rule({"keep": "true"}) == "keep=true"
    assert r.protect.label_rule({"keep": "false"}) is None
    assert r.protect.label_rule({"pinned": ""}) == "pinned"
    assert r.protect.local_only  # on by default


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
        ({"remediation": {"scope": ["host"]}}, "remediation.scope: not a matcher"),
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
        (None, {"basic_auth_users": {"p": "h"}}, "basic_auth_users: is not supported"),
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
