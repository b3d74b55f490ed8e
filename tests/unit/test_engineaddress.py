"""The engine address, read once (`exporter.core.engineaddress`) exactly as the docker SDK reads it.

The SDK client, the lean unix-socket client and the launch read each open the engine: if one read an
address differently from the SDK, reads and deletions would go to two engines. So every accepted form is
checked against the installed SDK's own `parse_host` and `UnixHTTPAdapter` (the socket file it opens), and
every refused form names why. Where the address comes from (flag, config, DOCKER_HOST) is
`engineaddress.resolve`, shared by the CLI and `earlyread`.
"""

from __future__ import annotations

import re
import subprocess
import sys

import docker.errors
import docker.transport
import docker.utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core import engineaddress
from exporter.core.engineaddress import DEFAULT_SOCKET, AddressError, parse, resolve
from exporter.engine import earlyread


def sdk_reading(address: str) -> tuple[str, str] | None:
    """(scheme, socket file or URL) as docker SDK 7.x opens `address`; None when the SDK refuses it."""
    try:
        base_url = docker.utils.parse_host(address, is_win32=False, tls=False)
    except (docker.errors.DockerException, ValueError):
        return None
    if base_url.startswith("http+unix://"):
        adapter = docker.transport.UnixHTTPAdapter(base_url)
        return "unix", re.sub("/+", "/", adapter.socket_path)
    return base_url.split("://", 1)[0], base_url


def ours(address: str) -> tuple[str, str] | None:
    """(scheme, socket file or URL) as the exporter opens `address`: the lean client and the launch read
    open `socket_path`, the SDK is handed `base_url`; None when refused."""
    try:
        resolved = parse(address)
    except AddressError:
        return None
    if resolved.socket_path is not None:
        assert sdk_reading(resolved.base_url) == ("unix", resolved.socket_path)
        return "unix", resolved.socket_path
    return sdk_reading(resolved.base_url)


@pytest.mark.parametrize(
    ("address", "socket_path"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("unix:///abs/x.sock", "/abs/x.sock"),
        ("unix://tmp/x.sock", "/tmp/x.sock"),  # the SDK's docs' form: absolute, never below the working directory
        ("unix://run/user/1000/docker.sock", "/run/user/1000/docker.sock"),
        ("unix://x.sock", "/x.sock"),
        ("http+unix:///abs/x.sock", "/abs/x.sock"),
        ("http+unix://tmp/x.sock", "/tmp/x.sock"),
        ("unix:///abs/x.sock/", "/abs/x.sock"),
        ("  unix:///abs/x.sock  ", "/abs/x.sock"),
        ("unix://", DEFAULT_SOCKET),  # names no file: the SDK's (and the docker CLI's) default socket
    ],
)
def test_unix_addresses_open_the_socket_the_sdk_opens(address: str, socket_path: str) -> None:
    resolved = parse(address)
    assert resolved.scheme == "unix"
    assert resolved.socket_path == socket_path
    assert sdk_reading(address) == ("unix", socket_path)
    # the SDK is handed the absolute form, which it cannot read as anything else
    assert sdk_reading(resolved.base_url) == ("unix", socket_path)


def test_no_address_is_the_default_socket() -> None:
    assert parse(None).socket_path == DEFAULT_SOCKET
    assert parse(None).display == f"unix://{DEFAULT_SOCKET} (default)"


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:2375", "tcp://docker.example:2376", "http://10.0.0.1:2375", "https://h:2376", "10.0.0.1:2375"],
)
def test_tcp_addresses_go_to_the_sdk_as_given(address: str) -> None:
    resolved = parse(address)
    assert resolved.scheme == "tcp"
    assert resolved.socket_path is None  # no lean client, no launch read: the SDK in the lane threads
    assert resolved.base_url == address
    assert sdk_reading(address) is not None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("ssh://user@host", "ssh:// is not supported"),
        ("ssh://user@host:2222", "ssh:// is not supported"),
        ("npipe:////./pipe/docker_engine", "Windows"),
        ("fd://", "fd:// is not supported"),
        ("tcp://", "names no host"),
        ("tcp://h", "port is required"),
        ("tcp://h:port", "port is required"),
        ("tcp://h:99999", "port is required"),
        ("unix:///", "names no socket file"),
        ("unix:///abs.sock?x=1", "no query"),
        ("tcp://u:secret@h:2375", "password"),
        ("udp://h:1", "unknown scheme 'udp'"),
        ("localhost:2375", "unknown scheme 'localhost'"),  # the SDK reads `localhost` as a scheme too
    ],
)
def test_forms_the_exporter_cannot_serve_are_refused_saying_why(address: str, reason: str) -> None:
    with pytest.raises(AddressError, match=re.escape(reason)):
        parse(address)


_SEGMENT = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)  # a shared machine's load must not fail it on time
@given(
    scheme=st.sampled_from(["unix://", "unix:///", "http+unix://", "tcp://", "http://", "https://", ""]),
    user=st.sampled_from(["", "u@", "u:p@"]),
    host=st.sampled_from(["", "tmp", "Tmp", "h", "127.0.0.1", "[::1]"]),
    port=st.sampled_from(["", ":2375", ":0", ":x"]),
    segments=st.lists(_SEGMENT, max_size=3),
    tail=st.sampled_from(["", "/", "//", "?q=1", "#f"]),
)
def test_every_address_either_reads_as_the_sdk_reads_it_or_is_refused(
    scheme: str, user: str, host: str, port: str, segments: list[str], tail: str
) -> None:
    """Generated addresses, including the SDK's odd corners (a first segment read as a host name: lower-
    cased, user and port dropped): the exporter never reads one differently from the SDK; it only refuses
    some the SDK would take (ssh, npipe and `unix:///`, which the SDK turns into a garbage path)."""
    address = scheme + user + host + port + "".join("/" + s for s in segments) + tail
    mine = ours(address)
    if mine is not None:
        assert sdk_reading(address) == mine, address


# -- where it comes from -----------------------------------------------------------------------------------
def test_the_flag_wins_then_the_config_then_docker_host() -> None:
    assert resolve("unix://flag.sock", "unix:///config.sock", "unix:///env.sock")[0] == "--docker.host"
    source, address = resolve(None, "unix://config.sock", "unix:///env.sock")
    assert (source, address.socket_path) == ("docker.host", "/config.sock")
    source, address = resolve(None, None, "unix://env.sock")
    assert (source, address.socket_path) == ("DOCKER_HOST", "/env.sock")
    assert resolve(None, None, "") == (None, engineaddress.DEFAULT)  # an empty DOCKER_HOST is unset


@pytest.mark.parametrize(
    ("flag", "config", "env", "named"),
    [
        ("ssh://h", None, None, "--docker.host: 'ssh://h'"),
        ("", None, None, "--docker.host: ''"),
        (None, "tcp://h", None, "docker.host: 'tcp://h'"),
        (None, None, "npipe:////./pipe/x", "DOCKER_HOST: 'npipe:////./pipe/x'"),
    ],
)
def test_a_refused_address_names_where_it_came_from(flag: str | None, config: str | None, env: str, named: str) -> None:
    with pytest.raises(AddressError, match=re.escape(named)):
        resolve(flag, config, env)


@pytest.mark.parametrize(
    ("argv", "environ", "socket_path"),
    [
        (["--docker.host", "unix://tmp/flag.sock"], {}, "/tmp/flag.sock"),
        ([], {"DOCKER_HOST": "unix://tmp/env.sock"}, "/tmp/env.sock"),
        ([], {}, DEFAULT_SOCKET),
    ],
)
def test_the_launch_read_resolves_as_the_cli_does(argv: list[str], environ: dict[str, str], socket_path: str) -> None:
    address = earlyread.engine_address(argv, environ)
    assert address is not None
    assert address.socket_path == socket_path


def test_the_launch_read_sends_nothing_for_an_address_the_cli_refuses() -> None:
    assert earlyread.engine_address(["--docker.host", "ssh://h"], {}) is None
    assert earlyread.engine_address(["--docker.host="], {"DOCKER_HOST": "unix:///env.sock"}) is None
    assert earlyread.engine_address([], {"DOCKER_HOST": "tcp://h"}) is None


def test_the_launch_read_stays_import_light() -> None:
    """`earlyread` runs before the rest of the exporter is imported: sharing the resolution must not pull in
    the SDK, pydantic, aiohttp or the config models."""
    code = "import sys, exporter.engine.earlyread; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert {m for m in loaded if m.startswith("exporter")} == {
        "exporter",
        "exporter.engine",
        "exporter.engine.earlyread",
        "exporter.core",
        "exporter.core.engineaddress",
    }
    assert not loaded & {"docker", "requests", "pydantic", "aiohttp", "yaml", "prometheus_client"}
