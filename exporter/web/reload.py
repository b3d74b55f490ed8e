"""Reload: SIGHUP and `POST /-/reload` re-read the config files and apply them to the running exporter.

As in Prometheus, a reload is all or nothing: the files are read with the same `load_config` as start-up
(so `--config.check`, start-up and reload accept the same files, token files re-read included), and a new
config that is invalid, or that changes a key only a restart can apply (`RESTART_KEYS`), is refused as a
whole: the old config keeps running, the reason is logged and answered, and
`docker_exporter_config_last_reload_successful` drops to 0. Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from exporter.config import Config, ConfigError, load_config
from exporter.core.logs import kv
from exporter.web.webconfig import WebConfig, load_web_config

log = logging.getLogger("exporter.reload")  # the caller= name log pipelines filter on, not the file's place

#: Keys read once when the exporter starts (the engine client, the state file, the HTTP app and its routes).
RESTART_KEYS = (
    "docker.host",
    "docker.timeout",
    "docker.disk_usage_timeout",
    "docker.max_response_bytes",
    "runtime.endpoint",
    "runtime.timeout",
    "state.path",
    "remediation.enabled",
)
#: Restart-only keys that matter only while remediation is enabled (the audit log file, the body limit of the
#: HTTP app, the relay's HTTP client).
REMEDIATION_RESTART_KEYS = ("remediation.audit_log", "remediation.max_body_bytes", "remediation.relay")


def _value(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys whose change a running exporter cannot apply, in `RESTART_KEYS` order."""
    keys = RESTART_KEYS + (REMEDIATION_RESTART_KEYS if old.remediation.enabled else ())
    return [key for key in keys if _value(old, key) != _value(new, key)]


def web_restart_only_changes(old: WebConfig, new: WebConfig) -> list[str]:
    """Top-level web config keys that changed, except `http_server_config` (its headers apply live).

    The TLS context is built at start-up (the certificate files themselves are re-read on rotation);
    any other key a later version accepts is refused until it is known to apply live.
    """
    before = old.model_dump(by_alias=True, exclude={"http"})
    after = new.model_dump(by_alias=True, exclude={"http"})
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


@dataclass(frozen=True)
class ReloadSource:
    """Where a reload reads from: the files given on the command line, and whether `/-/reload` is enabled."""

    config_file: str | None
    web_config_file: str | None = None
    enable_lifecycle: bool = False


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    message: str


class ReloadMetrics:
    """The two gauges Prometheus itself exports about reloads, under this exporter's prefix."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.successful = Gauge(
            "docker_exporter_config_last_reload_successful",
            "1 if the last configuration reload (or the start) succeeded, 0 if it was refused.",
            registry=registry,
        )
        self.success_timestamp = Gauge(
            "docker_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration in effect was loaded (start or last successful reload).",
            registry=registry,
        )


Apply = Callable[[Config, WebConfig], None]


class Reloader:
    """Re-reads the files, refuses what cannot apply, and hands the rest to `apply` (no await inside it)."""

    def __init__(
        self,
        source: ReloadSource,
        config: Config,
        web_config: WebConfig,
        apply: Apply,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.config = config
        self.web_config = web_config
        self.apply = apply
        self.clock = clock
        self.metrics = ReloadMetrics(registry)
        self.metrics.successful.set(1)  # the start-up load succeeded, or the process would not be running
        self.metrics.success_timestamp.set(clock())
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> ReloadResult:
        """Read, check and apply the files; reloads queue behind the one in progress."""
        async with self._lock:
            try:
                config = await asyncio.to_thread(load_config, self.source.config_file)
            except ConfigError as exc:
                return self._refuse(trigger, "; ".join(exc.problems))
            except Exception as exc:  # a reader bug still fails the reload visibly, never as a bare 500
                return self._refuse(trigger, f"cannot read the configuration: {exc!r}", unexpected=True)
            try:
                web_config = await asyncio.to_thread(load_web_config, self.source.web_config_file)
            except ConfigError as exc:
                return self._refuse(trigger, "; ".join(f"--web.config.file {p}" for p in exc.problems))
            except Exception as exc:
                return self._refuse(trigger, f"cannot read --web.config.file: {exc!r}", unexpected=True)
            problems = [
                f"{key} cannot change on reload; restart the exporter"
                for key in restart_only_changes(self.config, config)
            ] + [
                f"--web.config.file {key} cannot change on reload; restart the exporter"
                for key in web_restart_only_changes(self.web_config, web_config)
            ]
            if problems:
                return self._refuse(trigger, "; ".join(problems))
            self.apply(config, web_config)
            self.config, self.web_config = config, web_config
            self.metrics.successful.set(1)
            self.metrics.success_timestamp.set(self.clock())
            files = " ".join(filter(None, [self.source.config_file or "(defaults)", self.source.web_config_file]))
            log.info("configuration reloaded", extra=kv(file=files, trigger=trigger))
            return ReloadResult(True, "configuration reloaded")

    def _refuse(self, trigger: str, reason: str, *, unexpected: bool = False) -> ReloadResult:
        self.metrics.successful.set(0)
        log.error(
            "reload failed, keeping the old configuration",
            extra=kv(trigger=trigger, err=reason),
            exc_info=unexpected,  # inside an except block: the traceback of a bug goes to the log
        )
        return ReloadResult(False, f"reload failed, keeping the old configuration: {reason}")
