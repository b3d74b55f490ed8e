"""Logging in logfmt (the Prometheus ecosystem's default) or JSON, selected by `--log.format`.

Facts go in fields, not in the message, so log pipelines can filter on them (`action=free-disk run_id=…`):

    log.info("remediation run ended", extra=kv(action=run.action, run_id=run.run_id, deleted=3))

gives `… msg="remediation run ended" action=free-disk run_id=4f2a deleted=3` in logfmt and the same keys in
JSON. Field names are snake_case; values are rendered with str() (None as an empty value).
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warn", "error")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


#: Every control character gets an escape, so one record is always one line whatever an engine error holds.
_ESCAPES = {
    **{chr(i): f"\\u{i:04x}" for i in range(0x20)},
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_QUOTE = str.maketrans(_ESCAPES)
_FIELDS_ATTR = "log_fields"


def kv(**fields: object) -> dict[str, dict[str, object]]:
    """`extra=` for a log call: facts as fields of the record (see the module docstring)."""
    return {_FIELDS_ATTR: fields}


def _logfmt_value(value: str) -> str:
    if value and all(c.isalnum() or c in "-._/:@" for c in value):
        return value
    return '"' + value.translate(_QUOTE) + '"'


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, str]:
    """The same keys in both formats, in go-kit's order, so log pipelines need one parser per format."""
    fields = {
        "ts": _timestamp(record),
        "level": record.levelname.lower().replace("warning", "warn"),
        "caller": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, _FIELDS_ATTR, None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            name = key if key not in fields else f"{key}_"  # never overwrite ts/level/caller/msg
            fields[name] = "" if value is None else str(value)
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


class WarnOnce:
    """Warns once per distinct problem (a broken peer repeats it on every poll), at debug level after that."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.last: str | None = None

    def log(self, problem: str, message: str, /, **fields: object) -> None:
        level = logging.DEBUG if problem == self.last else logging.WARNING
        self.last = problem
        self.logger.log(level, message, extra=kv(**fields))

    def clear(self) -> None:
        """The problem is gone: its next occurrence warns again."""
        self.last = None
