"""Command-line parsing, `--version`, and the start-up decisions that need no listener."""

from __future__ import annotations

import errno
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import exporter
from exporter import cli
from exporter.config import Config
from exporter.core.engineaddress import AddressError
from exporter.web.listen import format_address, listen_error


def test_version_has_node_exporters_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"docker-image-exporter, version {exporter.__version__} (revision: {exporter.__revision__})"
    assert lines[1].split() == ["build", "date:", exporter.__build_date__]
    assert lines[2].split()[:3] == ["python", "version:", platform.python_version()]
    assert lines[3].startswith("  platform:")


def test_build_info_falls_back_to_unknown_without_generated_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout has no exporter/_build.py (setup.py writes it into wheels only)."""
    import importlib

    real = importlib.import_module

    def no_build(name: str, package: str | None = None) -> object:
        if name == "exporter._build":
            raise ModuleNotFoundError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_build)
    assert exporter._build_info() == ("unknown", "unknown")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--web.max-connections", "0"], "--web.max-connections: want a whole number of at least 1, got '0'"),
        (["--web.max-connections", "many"], "--web.max-connections: want a whole number of at least 1"),
        (["--web.read-header-timeout", "0s"], "--web.read-header-timeout: want a duration above zero"),
        (["--web.read-header-timeout", "soon"], "--web.read-header-timeout:"),
        (["--web.listen-address", "10151"], "--web.listen-address: want [host]:port, got '10151'"),
    ],
)
def test_bad_flags_name_the_flag(args: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(args)
    assert exit_info.value.code == 2
    assert problem in capsys.readouterr().err


def test_listener_flags_parse() -> None:
    args = cli.build_parser().parse_args(["--web.max-connections", "64", "--web.read-header-timeout", "1m30s"])
    assert (args.max_connections, args.read_header_timeout) == (64, 90.0)
    defaults = cli.build_parser().parse_args([])
    assert (defaults.max_connections, defaults.read_header_timeout) == (512, 10.0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        (None, False),  # all interfaces
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("exporter.example.org", False),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert cli.is_loopback(host) is loopback


def test_plain_http_warning_only_when_deletion_is_reachable_in_clear_text() -> None:
    warning = cli.plain_http_warning(None, 10151, tls=False, remediation=True)
    assert warning is not None
    assert "plain HTTP on :10151" in warning
    assert "--web.config.file" in warning
    assert "docs/security.md" in warning
    assert cli.plain_http_warning("10.0.0.5", 10151, tls=True, remediation=True) is None
    assert cli.plain_http_warning("127.0.0.1", 10151, tls=False, remediation=True) is None
    assert cli.plain_http_warning(None, 10151, tls=False, remediation=False) is None


@pytest.mark.parametrize(("host", "text"), [(None, ":10151"), ("127.0.0.1", "127.0.0.1:10151"), ("::1", "[::1]:10151")])
def test_format_address_round_trips_through_the_flag(host: str | None, text: str) -> None:
    assert format_address(host, 10151) == text
    assert cli.parse_listen_address(text) == (host, 10151)


def test_listen_error_names_cause_and_flag() -> None:
    err = listen_error(None, 10151, OSError(errno.EADDRINUSE, "Address already in use"))
    assert str(err) == "cannot listen on :10151: address already in use; change --web.listen-address"
    other = listen_error("10.9.9.9", 80, OSError(errno.ENETDOWN, "Network is down"))
    assert str(other) == "cannot listen on 10.9.9.9:80: Network is down; change --web.listen-address"


# -- the engine address ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "environ", "problem"),
    [
        (["--docker.host", "ssh://user@host"], {}, "invalid engine address: --docker.host: 'ssh://user@host': ssh://"),
        (["--docker.host", "tcp://h"], {}, "--docker.host: 'tcp://h': a port is required"),
        (["--docker.host="], {}, "--docker.host: '': empty address"),
        (["--runtime.endpoint="], {}, "--runtime.endpoint: '': empty endpoint"),
        (["--runtime.endpoint", " "], {}, "--runtime.endpoint: ' ': empty endpoint"),
        ([], {"DOCKER_HOST": "npipe:////./pipe/docker_engine"}, "DOCKER_HOST: 'npipe:////./pipe/docker_engine'"),
    ],
)
def test_a_refused_engine_address_stops_start_up_and_the_config_check_naming_its_source(
    args: list[str],
    environ: dict[str, str],
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    for check in ([], ["--config.check"]):
        assert cli.main([*args, *check]) == 1
        assert problem in capsys.readouterr().err


def test_an_empty_runtime_endpoint_flag_is_refused_not_read_as_unset() -> None:
    """Not the Docker engine instead, and not the config file's endpoint either: the flag names nothing."""
    meant = Config.model_validate({"runtime": {"endpoint": "unix:///run/containerd/containerd.sock"}})
    for config in (Config(), meant):
        with pytest.raises(AddressError, match=r"^--runtime\.endpoint: '': empty endpoint"):
            cli.resolve_runtime("", None, config)
    assert cli.resolve_runtime(None, None, meant) == "unix:///run/containerd/containerd.sock"
    assert cli.resolve_runtime(None, None, Config()) is None


def test_an_empty_runtime_endpoint_stops_the_process_before_it_reaches_any_engine(tmp_path: Path) -> None:
    """The installed entry point, started for real (no `--config.check`): exit status 1 and the flag named.

    Were the empty flag read as unset, the exporter would start against DOCKER_HOST (a socket nobody serves
    here) and keep running: the timeout then fails the test.
    """
    with socket.socket() as probe:  # a port it could listen on: a start that went on would not fail on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/nobody.sock"}
    command = [sys.executable, "-m", "exporter", "--runtime.endpoint=", f"--web.listen-address=127.0.0.1:{port}"]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "invalid engine address: --runtime.endpoint: '': empty endpoint" in result.stderr
    assert "starting docker-image-exporter" not in result.stderr


def test_a_refused_docker_host_in_the_config_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("docker:\n  host: ssh://user@host\n")
    assert cli.main(["--config.file", str(config), "--config.check"]) == 1
    assert "  - docker.host: 'ssh://user@host': ssh:// is not supported" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "environ", "engine"),
    [
        (
            ["--docker.host", "unix://tmp/x.sock"],
            {},
            "unix:///tmp/x.sock (given as unix://tmp/x.sock) from --docker.host",
        ),
        ([], {"DOCKER_HOST": "tcp://127.0.0.1:2375"}, "tcp://127.0.0.1:2375 from DOCKER_HOST"),
        ([], {}, "unix:///var/run/docker.sock (default)"),
    ],
)
def test_the_config_check_says_which_engine_would_be_contacted(
    args: list[str],
    environ: dict[str, str],
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main([*args, "--config.check"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"docker-image-exporter: engine {engine}"
