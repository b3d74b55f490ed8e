"""Logging in logfmt (the Prometheus ecosystem's default) or JSON, selected by `--log.format`."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warn", "error")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _logfmt_value(value: str) -> str:
    if value and all(c.isalnum() or c in "-._/:@" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, str]:
    """The same keys in both formats, in go-kit's order, so log pipelines need one parser per format."""
    fields = {
        "ts": _timestamp(record),
        "level": record.levelname.lower().replace("warning", "warn"),
        "caller": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["err"] = formatter.formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(self, record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(self, record))


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": logging.WARNING}.get(level, level.upper()))
    # The SDK's HTTP stack is chatty at debug level and says nothing an operator needs.
    for noisy in ("urllib3", "docker", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
