"""Command line: node_exporter-style dotted flags, logging, config load, then run the app."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from exporter import __version__
from exporter.config import Config, ConfigError, load_config
from exporter.logs import LEVELS, setup_logging
from exporter.web.basicauth import basic_auth_gate
from exporter.web.tls import server_context
from exporter.web.webconfig import load_web_config

DEFAULT_PORT = 10151
log = logging.getLogger("exporter")


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`:10151`, `0.0.0.0:10151`, `[::1]:10151` -> (host or None for all interfaces, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--web.listen-address: want [host]:port, got {text!r}")
    host = host.strip("[]")
    return (host or None), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docker-image-exporter",
        description="Prometheus exporter for Docker images, with alert-driven pruning.",
    )
    p.add_argument("--config.file", dest="config_file", help="YAML configuration file (default: built-in defaults)")
    p.add_argument("--config.check", dest="config_check", action="store_true", help="validate the config and exit")
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=f":{DEFAULT_PORT}",
        type=parse_listen_address,
        help=f"address to listen on (default :{DEFAULT_PORT})",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        help="exporter-toolkit web config: TLS (with client certificates), basic auth users and response headers",
    )
    p.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics", help="metrics path")
    p.add_argument(
        "--docker.host",
        dest="docker_host",
        help="engine address (default: docker.host from the config, else DOCKER_HOST, else the platform default)",
    )
    p.add_argument("--log.level", dest="log_level", default="info", choices=LEVELS)
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=("logfmt", "json"))
    p.add_argument("--version", action="version", version=f"docker-image-exporter {__version__}")
    return p


def resolve_docker_host(flag: str | None, config: Config) -> str | None:
    return flag or config.docker.host or os.environ.get("DOCKER_HOST") or None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config_file)
        web_config = load_web_config(args.web_config_file)
        ssl_context = server_context(web_config)  # loads the certificates now: a bad pair stops startup
        basic_auth = basic_auth_gate(web_config)
    except ConfigError as exc:
        print(f"docker-image-exporter: {exc}", file=sys.stderr)
        return 1
    if args.config_check:
        checked = " and ".join(filter(None, [args.config_file or "(defaults)", args.web_config_file]))
        print(f"docker-image-exporter: configuration {checked} is valid")
        return 0
    if not args.telemetry_path.startswith("/"):
        print("docker-image-exporter: --web.telemetry-path must start with /", file=sys.stderr)
        return 1
    from exporter.app import create_app  # imported late so --config.check stays fast and engine-free

    docker_host = resolve_docker_host(args.docker_host, config)
    host, port = args.listen
    log.info(
        "starting docker-image-exporter %s on %s://%s:%d, engine %s, remediation %s",
        __version__,
        "https" if ssl_context else "http",
        host or "*",
        port,
        docker_host or "default socket",
        "enabled" if config.remediation.enabled else "disabled",
    )
    app = create_app(
        config,
        docker_host=docker_host,
        telemetry_path=args.telemetry_path,
        headers=web_config.headers,
        basic_auth=basic_auth,
    )
    web.run_app(app, host=host, port=port, ssl_context=ssl_context, print=None, access_log=None, shutdown_timeout=10)
    return 0
