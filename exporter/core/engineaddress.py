"""The engine's address, resolved once: the one reading every path that opens the engine shares.

Why one function: the docker SDK, the lean unix-socket client of the delete lane and of image inspects, and
the launch read (`earlyread`) each open the engine themselves. If they read an address differently they
talk to different engines, and a run can delete on an engine the config does not name. `parse` reads an
address exactly as docker SDK 7.x `docker.utils.parse_host` (plus its `UnixHTTPAdapter`) does, so the
SDK client and the raw sockets meet at the same file: `unix://tmp/x.sock`, the form the SDK's own docs use,
is the socket `/tmp/x.sock`, never `tmp/x.sock` below the working directory.

Where the SDK's reading is odd (a `unix://` whose first segment it treats as a host name, so it is
lower-cased and loses a user or port part) the reading is still the SDK's: what matters is that every path
agrees with the client that lists and inspects. Forms the exporter cannot serve are refused here, with the
reason, so a config check or start-up stops on them instead of every read failing later: `ssh://` (the
SDK needs paramiko and a key setup the exporter does not manage), `npipe://` (Windows), `fd://`, and the
SDK's own refusals (no port on tcp, a query, a password).

`from_command_line` is the launch read's way to the same answer before the CLI is imported: it reads the
command line by the CLI's own flag table (`FLAGS`, from which `cli.build_parser` adds its flags), and only
when every flag is one it knows exactly is it certain. `resolve` is the one precedence (`--docker.host`, else the config file's `docker.host`, else `DOCKER_HOST`)
for the CLI, which reads the config file through the config loader, and for the launch read, which reads
only that key, leniently (`host_in_config_file`), before the loader is imported.

Standard library only (PyYAML is imported when a config file is read): `earlyread` imports this before
anything else of the exporter is loaded.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

#: The SDK's platform default on Linux, used when no address is given (or `unix://` names no socket).
DEFAULT_SOCKET = "/var/run/docker.sock"

#: `value`: takes a value (`--flag=x` or `--flag x`); `switch`: no value, still starts the exporter;
#: `no-engine`: no value, and the process then talks to no engine at all (it checks, prints and exits).
FlagKind = Literal["value", "switch", "no-engine"]

#: Every flag of the command line, in `--help` order (`-h`/`--help` are argparse's own).
FLAGS: dict[str, FlagKind] = {
    "--config.file": "value",
    "--config.check": "no-engine",
    "--web.listen-address": "value",
    "--web.config.file": "value",
    "--web.enable-lifecycle": "switch",
    "--web.telemetry-path": "value",
    "--web.max-connections": "value",
    "--web.read-header-timeout": "value",
    "--docker.host": "value",
    "--runtime.endpoint": "value",
    "--log.level": "value",
    "--log.format": "value",
    "--version": "no-engine",
    "-h": "no-engine",
    "--help": "no-engine",
}
#: argparse adds these itself.
ARGPARSE_OWN = frozenset({"-h", "--help"})


def flags_of_kind(kind: FlagKind) -> frozenset[str]:
    return frozenset(name for name, k in FLAGS.items() if k == kind)


#: A config file larger than this is left to the real loader (which refuses files over 1 MiB).
MAX_CONFIG_BYTES = 1 << 20

#: Where an address came from, in the order the CLI consults them; error messages name it.
Source = Literal["--docker.host", "docker.host", "DOCKER_HOST"]


class AddressError(ValueError):
    """An engine address the exporter cannot use; the message says why (without naming where it came from)."""


@dataclass(frozen=True)
class EngineAddress:
    """One resolved engine address: what the SDK is given, and the socket file the raw clients open."""

    #: The address as configured; None when none was (the platform default).
    given: str | None
    scheme: Literal["unix", "tcp"]
    #: The unix socket file, absolute, as the SDK opens it; None for tcp.
    socket_path: str | None
    #: What `docker.APIClient(base_url=...)` is given: for unix, the absolute `unix://` form of
    #: `socket_path`, so the SDK cannot read it any other way; for tcp, the address as given.
    base_url: str

    @property
    def display(self) -> str:
        """For logs and the landing page: the socket or URL actually contacted, and the address as given
        when that reads differently."""
        where = f"unix://{self.socket_path}" if self.socket_path is not None else self.base_url
        if self.given is None:
            return f"{where} (default)"
        if self.given.strip() != where:
            return f"{where} (given as {self.given.strip()})"
        return where


DEFAULT = EngineAddress(given=None, scheme="unix", socket_path=DEFAULT_SOCKET, base_url=f"unix://{DEFAULT_SOCKET}")


def parse(address: str | None) -> EngineAddress:
    """Read `address` as the docker SDK does; AddressError for a form the exporter refuses.

    None means no address was configured: the SDK's default socket. An empty or blank string is refused:
    it is a configured value that names nothing (typically an unset variable expanded into the config).
    """
    if address is None:
        return DEFAULT
    text = address.strip()
    if not text:
        raise AddressError(
            "empty address: leave it unset for the default socket, or give unix:///path or tcp://host:port"
        )
    if text == "unix://":
        return EngineAddress(given=address, scheme="unix", socket_path=DEFAULT_SOCKET, base_url=DEFAULT.base_url)
    parsed = urlparse(text)
    proto = parsed.scheme
    if not proto or any(c not in f"{string.ascii_letters}+" for c in proto):
        parsed = urlparse(f"//{text}", "tcp")  # a bare `host:port`, as the SDK reads it
        proto = "tcp"
    if proto == "ssh":
        raise AddressError(
            "ssh:// is not supported: forward the engine's socket instead "
            "(ssh -nNT -L /run/docker-remote.sock:/var/run/docker.sock user@host) and use unix:///run/docker-remote.sock"
        )
    if proto == "npipe":
        raise AddressError("npipe:// is Windows' named pipe; this exporter runs on Linux: use unix:// or tcp://")
    if proto == "fd":
        raise AddressError("fd:// is not supported by the docker SDK: use unix:///path or tcp://host:port")
    if proto in ("http", "https"):
        proto = "tcp"
    elif proto == "http+unix":
        proto = "unix"
    if proto not in ("tcp", "unix"):
        raise AddressError(f"unknown scheme {parsed.scheme!r}: use unix:///path/to/docker.sock or tcp://host:port")
    if parsed.params or parsed.query or parsed.fragment or parsed.password:
        raise AddressError("an engine address takes no query, fragment, parameters or password")
    if proto == "tcp":
        if not parsed.netloc:
            raise AddressError("tcp:// names no host: give tcp://host:port")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not port:
            raise AddressError("a port is required: tcp://host:port (2375 plain, 2376 with TLS)")
        return EngineAddress(given=address, scheme="tcp", socket_path=None, base_url=text)
    # unix: the SDK takes a first segment after `//` as a host name and puts it back as the path's first
    # directory (`unix://tmp/x.sock` is `/tmp/x.sock`); then its adapter makes the path absolute
    path = parsed.path
    if parsed.hostname is not None:
        path = f"{parsed.hostname}/{path}"
    path = re.sub("/+", "/", path).rstrip("/")  # `tmp//x.sock` is the file `tmp/x.sock`, as the kernel reads it
    if not path.strip("/"):
        raise AddressError("names no socket file: give unix:///path/to/docker.sock")
    if not path.startswith("/"):
        path = f"/{path}"
    return EngineAddress(given=address, scheme="unix", socket_path=path, base_url=f"unix://{path}")


def resolve(flag: str | None, config_host: str | None, env_host: str | None) -> tuple[Source | None, EngineAddress]:
    """(where the address came from, the address): `--docker.host`, else `docker.host`, else `DOCKER_HOST`.

    An empty flag or config value is refused by `parse` (it names nothing); an empty `DOCKER_HOST` counts
    as unset, as the docker SDK's `from_env` and the docker CLI treat it. AddressError messages here start
    with the source's name.
    """
    candidates: tuple[tuple[Source, str | None], ...] = (
        ("--docker.host", flag),
        ("docker.host", config_host),
        ("DOCKER_HOST", env_host or None),
    )
    for source, value in candidates:
        if value is not None:
            try:
                return source, parse(value)
            except AddressError as exc:
                raise AddressError(f"{source}: {value!r}: {exc}") from None
    return None, DEFAULT


def host_in_config_file(path: str) -> tuple[bool, str | None]:
    """(certain, docker.host) from the config file at `path`, read leniently and without the config loader;
    not certain on anything unusual (missing, over MAX_CONFIG_BYTES, not UTF-8, not YAML, a `docker` that is
    not a mapping, a `host` that is not a non-empty string): the loader then says what it is."""
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            return False, None
        with open(path, encoding="utf-8") as f:
            text = f.read()
        import yaml

        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:  # missing, unreadable, not UTF-8, not YAML: the real loader says what it is
        return False, None
    if document is None:
        return True, None
    if not isinstance(document, dict) or document.get("runtime") is not None:
        return False, None  # a `runtime` section may choose a CRI runtime: no Docker API request then
    docker = document.get("docker")
    if docker is None:
        return True, None
    if not isinstance(docker, dict):
        return False, None
    host = docker.get("host")
    if host is None:
        return True, None
    return (True, host) if isinstance(host, str) and host else (False, None)


def from_command_line(argv: Sequence[str], environ: Mapping[str, str]) -> EngineAddress | None:
    """The engine the CLI will talk to for `argv`, worked out without the CLI; None unless certain.

    None whenever the answer could differ from what the CLI decides (a flag not in `FLAGS` exactly: a
    positional, `--`, an abbreviation or a typo, which argparse decides; a config file not read cheaply), when
    no engine is involved (`no-engine` flags), or when the address is one the CLI refuses.
    """
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        kind = FLAGS.get(name)
        if kind == "no-engine":
            return None
        if kind == "switch" and not eq:
            i += 1
            continue
        if kind != "value":
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            i += 1
            value = argv[i]
        given[name] = value
        i += 1
    if "--runtime.endpoint" in given:
        return None  # a CRI runtime: the launch read speaks only the Docker API
    config_host: str | None = None
    config_file = given.get("--config.file")
    if config_file and "--docker.host" not in given:
        certain, config_host = host_in_config_file(config_file)
        if not certain:
            return None
    try:
        return resolve(given.get("--docker.host"), config_host, environ.get("DOCKER_HOST"))[1]
    except AddressError:  # the CLI stops start-up on it, naming the key
        return None
