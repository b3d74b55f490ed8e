"""Command line: node_exporter-style dotted flags, logging, config load, then run the app."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import platform
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

import exporter.core.memory
from exporter import __build_date__, __revision__, __version__
from exporter.config import Config, ConfigError, load_config
from exporter.core import engineaddress
from exporter.core.engineaddress import ARGPARSE_OWN, FLAGS, AddressError, EngineAddress, Source
from exporter.core.logs import LEVELS, kv, setup_logging
from exporter.core.units import parse_duration
from exporter.engine.backend import BackendUnavailable
from exporter.web.listen import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_HEADER_TIMEOUT,
    ListenerLimits,
    ListenError,
    format_address,
)
from exporter.web.tls import server_context
from exporter.web.webconfig import WebConfig, load_web_config

DEFAULT_PORT = 10151
log = logging.getLogger("exporter")


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`:10151`, `0.0.0.0:10151`, `[::1]:10151` -> (host or None for all interfaces, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--web.listen-address: want [host]:port, got {text!r}")
    host = host.strip("[]")
    return (host or None), int(port)


def positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{flag}: want a whole number of at least 1, got {text!r}")
        return int(text)

    return parse


def positive_duration(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"{flag}: want a duration above zero such as 10s, got {text!r}")
        return seconds

    return parse


def version_text() -> str:
    """node_exporter's `--version` layout, so fleet tooling that parses it finds the same fields."""
    return (
        f"docker-image-exporter, version {__version__} (revision: {__revision__})\n"
        f"  build date:       {__build_date__}\n"
        f"  python version:   {platform.python_version()} ({platform.python_implementation()})\n"
        f"  platform:         {sys.platform}/{platform.machine()}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docker-image-exporter",
        description="Prometheus exporter for Docker images, with alert-driven pruning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps --version's lines as they are
    )
    options: dict[str, dict[str, Any]] = {
        "--config.file": {"dest": "config_file", "help": "YAML configuration file (default: built-in defaults)"},
        "--config.check": {"dest": "config_check", "action": "store_true", "help": "validate the config and exit"},
        "--web.listen-address": {
            "dest": "listen",
            "default": f":{DEFAULT_PORT}",
            "type": parse_listen_address,
            "help": f"address to listen on (default :{DEFAULT_PORT})",
        },
        "--web.config.file": {
            "dest": "web_config_file",
            "help": "exporter-toolkit web config: TLS (with client certificates), basic auth users and response headers",
        },
        "--web.enable-lifecycle": {
            "dest": "enable_lifecycle",
            "action": "store_true",
            "help": "enable POST/PUT /-/reload (re-read the config files, as SIGHUP does); off: 403",
        },
        "--web.telemetry-path": {"dest": "telemetry_path", "default": "/metrics", "help": "metrics path"},
        "--web.max-connections": {
            "dest": "max_connections",
            "default": DEFAULT_MAX_CONNECTIONS,
            "type": positive_int("--web.max-connections"),
            "help": "open connections at most; over it the oldest stalled or idle one is closed "
            f"(default {DEFAULT_MAX_CONNECTIONS}; keep it below the process's file descriptor limit)",
        },
        "--web.read-header-timeout": {
            "dest": "read_header_timeout",
            "default": DEFAULT_READ_HEADER_TIMEOUT,
            "type": positive_duration("--web.read-header-timeout"),
            "help": f"close a connection whose request headers are not complete after this long "
            f"(default {DEFAULT_READ_HEADER_TIMEOUT:g}s)",
        },
        "--docker.host": {
            "dest": "docker_host",
            "help": "engine address (default: docker.host from the config, else DOCKER_HOST, else the platform default)",
        },
        "--runtime.endpoint": {
            "dest": "runtime_endpoint",
            "help": "a Kubernetes node's CRI runtime socket instead of a Docker engine "
            "(unix:///run/containerd/containerd.sock; default: runtime.endpoint from the config)",
        },
        "--log.level": {"dest": "log_level", "default": "info", "choices": LEVELS},
        "--log.format": {"dest": "log_format", "default": "logfmt", "choices": ("logfmt", "json")},
        "--version": {"action": "version", "version": version_text()},
    }
    # the one flag table (`engineaddress.FLAGS`, which the launch read shares) decides which flags exist: a flag
    # without options here fails every start at once, options for a flag not in the table are never added
    for name in FLAGS.keys() - ARGPARSE_OWN:
        if name not in options:
            raise AssertionError(f"{name} is in engineaddress.FLAGS but the parser has no options for it")
    for name in FLAGS:
        if name not in ARGPARSE_OWN:
            p.add_argument(name, **options[name])
    return p


def resolve_runtime(flag: str | None, docker_flag: str | None, config: Config) -> str | None:
    """The CRI endpoint to talk to, or None for a Docker engine; AddressError when both are named or the
    endpoint is not a unix socket. DOCKER_HOST is an environment default, not a choice: a runtime wins over it."""
    # an empty flag is a value that names nothing (often an unset variable expanded), never "unset": it must
    # not quietly choose the Docker engine instead of the runtime meant
    source, endpoint = (
        ("--runtime.endpoint", flag) if flag is not None else ("runtime.endpoint", config.runtime.endpoint)
    )
    if endpoint is None:
        return None
    if not endpoint.strip():
        raise AddressError(
            f"{source}: {endpoint!r}: empty endpoint: leave it unset for a Docker engine, "
            "or give unix:///path/to/socket"
        )
    if not endpoint.startswith("unix:///") or len(endpoint) == len("unix:///"):
        raise AddressError(f"{source}: {endpoint!r}: a CRI endpoint is unix:///path/to/socket")
    docker = docker_flag or config.docker.host
    if docker is not None:
        raise AddressError(
            f"both a Docker engine ({docker}) and a CRI runtime ({endpoint}) are set "
            "(--docker.host/docker.host and --runtime.endpoint/runtime.endpoint): set one"
        )
    return endpoint


def resolve_engine(flag: str | None, config: Config) -> tuple[Source | None, EngineAddress]:
    """The engine to talk to, by the one resolution the launch read shares (`engineaddress.resolve`)."""
    return engineaddress.resolve(flag, config.docker.host, os.environ.get("DOCKER_HOST"))


def is_loopback(host: str | None) -> bool:
    """True only for addresses no other machine can reach; None (all interfaces) and names that are not
    `localhost` count as reachable."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_warning(host: str | None, port: int, *, tls: bool, remediation: bool) -> str | None:
    """The start-up warning when image deletion is reachable from the network over plain HTTP, else None."""
    if not remediation or tls or is_loopback(host):
        return None
    return (
        f"remediation is enabled and served over plain HTTP on {format_address(host, port)}: anyone on the path "
        "can read the webhook's credentials and replay them to delete images. Serve HTTPS with "
        "--web.config.file (tls_server_config, ideally with client certificates), or listen on "
        "127.0.0.1 behind a TLS proxy; see docs/security.md"
    )


def build_restore_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docker-image-exporter restore",
        description="Bring back the images a remediation run deleted: pull each by repo digest, check that "
        "the image ID is the deleted one, re-create every tag. Reads the audit log; no exporter needs to run.",
    )
    p.add_argument("--audit-log", dest="audit_log", help="the audit log (default: remediation.audit_log of the config)")
    p.add_argument("--run", dest="run_id", required=True, help="the run_id of the run whose deletions to undo")
    p.add_argument("--image", help="only this image (its ID, or at least 12 hex characters of it)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="say what would be done; pull nothing")
    p.add_argument(
        "--force", action="store_true", help="move tags that name another image now back to the restored one"
    )
    p.add_argument("--config.file", dest="config_file", help="YAML configuration file (audit log, engine address)")
    p.add_argument("--docker.host", dest="docker_host", help="engine address (as for the exporter)")
    p.add_argument("--runtime.endpoint", dest="runtime_endpoint", help="CRI runtime socket (as for the exporter)")
    return p


def restore_main(argv: Sequence[str]) -> int:
    """`docker-image-exporter restore …`: one JSON line per image on stdout, each also in the audit log."""
    import json

    from exporter.engine.backend import open_engine
    from exporter.remediation.audit import AuditError, AuditLog
    from exporter.remediation.restore import FAILED, RestoreError, audit_line, deleted_images, restore_one, select

    args = build_restore_parser().parse_args(argv)
    try:
        config = load_config(args.config_file)
        runtime_endpoint = resolve_runtime(args.runtime_endpoint, args.docker_host, config)
        _, address = resolve_engine(args.docker_host, config)
    except (ConfigError, AddressError) as exc:
        print(f"docker-image-exporter restore: {exc}", file=sys.stderr)
        return 1
    audit_path = args.audit_log or config.remediation.audit_log
    try:
        images = select(deleted_images(audit_path, args.run_id), args.image)
    except RestoreError as exc:
        print(f"docker-image-exporter restore: {exc}", file=sys.stderr)
        return 1
    try:
        engine = open_engine(config, address.given, runtime_endpoint)
    except BackendUnavailable as exc:
        print(f"docker-image-exporter restore: {exc}", file=sys.stderr)
        return 1
    audit = AuditLog(audit_path)
    failed = 0

    async def restore_all() -> None:
        nonlocal failed
        for image in images:
            done = await restore_one(engine, image, force=args.force, dry_run=args.dry_run)
            line = audit_line(args.run_id, done, trigger="cli", dry_run=args.dry_run)
            await asyncio.to_thread(audit.write_many, [line])
            print(json.dumps(line, sort_keys=True), flush=True)
            failed += done.result in FAILED

    try:
        asyncio.run(restore_all())
    except AuditError as exc:
        print(f"docker-image-exporter restore: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()
        audit.close()
    return 2 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["restore"]:  # a subcommand: no server, no early listing (earlyread skips positionals)
        return restore_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    exporter.core.memory.configure()  # before any thread starts (glibc arenas: see exporter/core/memory.py)
    try:
        config = load_config(args.config_file)
        web_config = load_web_config(args.web_config_file)
        ssl_context = server_context(web_config)  # loads the certificates now: a bad pair stops startup
    except ConfigError as exc:
        print(f"docker-image-exporter: {exc}", file=sys.stderr)
        return 1
    try:
        runtime_endpoint = resolve_runtime(args.runtime_endpoint, args.docker_host, config)
        source, address = resolve_engine(args.docker_host, config)
    except AddressError as exc:  # the flag's or DOCKER_HOST's: a config file's stopped at load, keyed
        print(f"docker-image-exporter: invalid engine address: {exc}", file=sys.stderr)
        return 1
    if args.config_check:
        checked = " and ".join(filter(None, [args.config_file or "(defaults)", args.web_config_file]))
        print(f"docker-image-exporter: configuration {checked} is valid")
        if runtime_endpoint is not None:
            print(f"docker-image-exporter: CRI runtime {runtime_endpoint}")
        else:
            print(f"docker-image-exporter: engine {address.display}" + (f" from {source}" if source else ""))
        return 0
    if not args.telemetry_path.startswith("/"):
        print("docker-image-exporter: --web.telemetry-path must start with /", file=sys.stderr)
        return 1
    docker_host = address.given
    host, port = args.listen
    log.info(
        "starting docker-image-exporter",
        extra=kv(
            version=__version__,
            revision=__revision__,
            listen=f"{'https' if ssl_context else 'http'}://{host or '*'}:{port}",
            engine=address.display if runtime_endpoint is None else f"{runtime_endpoint} (CRI)",
            remediation="enabled" if config.remediation.enabled else "disabled",
        ),
    )
    warning = plain_http_warning(host, port, tls=ssl_context is not None, remediation=config.remediation.enabled)
    if warning:
        log.warning("%s", warning)
    try:
        asyncio.run(run(args, config, web_config, ssl_context, docker_host, runtime_endpoint))
    except (ListenError, BackendUnavailable) as exc:
        log.error("%s", exc)
        return 1
    log.info("stopped")
    return 0


async def run(
    args: argparse.Namespace,
    config: Config,
    web_config: WebConfig,
    ssl_context: ssl.SSLContext | None,
    docker_host: str | None,
    runtime_endpoint: str | None = None,
) -> None:
    """Send the engine the first poll's reads, then import and build the app while it answers, then serve.

    Why this order: with many images, listing them takes the engine about as long as importing aiohttp, the
    remediation service and the rest takes here; started first, the listing overlaps that work, and
    `/-/ready` (the first listing published) comes sooner. The app modules
    are imported only now so that `--config.check` stays fast and engine-free. A listener that cannot bind
    still stops start-up with one line: the reads not sent yet are cancelled; the one in flight ends in its
    worker thread (within `docker.timeout`) before the process exits.
    """
    from exporter.engine import earlyread
    from exporter.engine.backend import open_engine
    from exporter.engine.firstreads import FirstReads

    engine = open_engine(config, docker_host, runtime_endpoint)
    reads = await FirstReads.start(engine, early=earlyread.claim(engine.address))
    try:
        from exporter.web.aiohttpload import import_aiohttp

        import_aiohttp()  # before anything imports it: see the module
        from exporter.app import create_app
        from exporter.web.basicauth import basic_auth_gate
        from exporter.web.reload import ReloadSource
        from exporter.web.server import serve

        app = create_app(
            config,
            docker_host=docker_host,
            telemetry_path=args.telemetry_path,
            engine=engine,
            web_config=web_config,
            reload=ReloadSource(args.config_file, args.web_config_file, enable_lifecycle=args.enable_lifecycle),
            basic_auth=basic_auth_gate(web_config),
            first_reads=reads,
        )
        exporter.core.memory.resume_collector_after_startup()  # imports done, app built: see memory.py
        limits = ListenerLimits(max_connections=args.max_connections, read_header_timeout=args.read_header_timeout)
        host, port = args.listen
        await serve(app, host=host, port=port, ssl_context=ssl_context, limits=limits)
    finally:  # after a normal stop the services closed the engine already; both are idempotent
        reads.discard()
        engine.close()
