"""Log lines parse as logfmt or JSON whatever the message holds, with the same keys in both formats."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from exporter.core.logs import JsonFormatter, LogfmtFormatter, kv, setup_logging

CREATED = 1_767_323_045.25  # 2026-01-02T03:04:05.250Z


def record(msg: str, level: int = logging.WARNING, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("exporter.poller", level, __file__, 1, msg, None, exc_info)
    rec.created, rec.msecs = CREATED, 250.0
    return rec


LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict reader: the whole line must be `key=value` pairs; quoted values are unescaped."""
    pairs = LOGFMT_PAIR.findall(line)
    assert "".join(f"{k}={v} " for k, v in pairs).rstrip() == line, f"not logfmt: {line!r}"
    escapes = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}

    def unescape(m: re.Match[str]) -> str:
        return chr(int(m.group(1), 16)) if m.group(1) else escapes[m.group(2)]

    return {k: re.sub(r"\\(?:u([0-9a-f]{4})|(.))", unescape, v[1:-1]) if v.startswith('"') else v for k, v in pairs}


def test_logfmt_keeps_go_kit_order_and_plain_values_bare() -> None:
    line = LogfmtFormatter().format(record("engine-reachable"))
    assert line == "ts=2026-01-02T03:04:05.250Z level=warn caller=exporter.poller msg=engine-reachable"


@pytest.mark.parametrize(
    "msg",
    [
        "two words",
        'say "hi"',
        "back\\slash",
        "line one\nline two",
        "",
        "key=value inside",
        'a \\"tricky\\" one\n',
    ],
)
def test_logfmt_quotes_and_escapes_what_would_break_parsing(msg: str) -> None:
    line = LogfmtFormatter().format(record(msg))
    assert "\n" not in line
    assert parse_logfmt(line)["msg"] == msg


def test_logfmt_exception_is_one_line() -> None:
    line = LogfmtFormatter().format(record("failed", logging.ERROR, exc=True))
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["level"] == "error"
    assert fields["err"].startswith("Traceback") and fields["err"].endswith("ValueError: boom")


def test_json_has_the_same_fields() -> None:
    rec = record('quote " and\nnewline', logging.ERROR, exc=True)
    data = json.loads(JsonFormatter().format(rec))
    assert list(data) == ["ts", "level", "caller", "msg", "err"]
    assert data["ts"] == "2026-01-02T03:04:05.250Z" and data["level"] == "error"
    assert data["msg"] == 'quote " and\nnewline'
    assert data["err"].endswith("ValueError: boom")
    assert parse_logfmt(LogfmtFormatter().format(rec)) == data


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("urllib3", "docker", "aiohttp.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("level", "fmt", "want_level", "formatter"),
    [("warn", "json", logging.WARNING, JsonFormatter), ("debug", "logfmt", logging.DEBUG, LogfmtFormatter)],
)
def test_setup_logging(level: str, fmt: str, want_level: int, formatter: type[logging.Formatter]) -> None:
    setup_logging(level, fmt)
    root = logging.getLogger()
    assert root.level == want_level
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, formatter)
    assert logging.getLogger("urllib3").level == logging.WARNING  # the SDK's HTTP stack stays quiet at debug


@pytest.mark.parametrize("msg", ["carriage\rreturn", "tab\there", "bell\x07and\x1bescape"])
def test_every_control_character_is_escaped(msg: str) -> None:
    line = LogfmtFormatter().format(record(msg))
    assert not any(ord(c) < 0x20 for c in line)
    assert parse_logfmt(line)["msg"] == msg


def test_facts_are_fields_in_both_formats() -> None:
    rec = record("remediation run ended", logging.INFO)
    rec.__dict__.update(kv(action="free-disk", run_id="4f2a", deleted=3, detail="two words", none=None))
    logfmt = parse_logfmt(LogfmtFormatter().format(rec))
    as_json = json.loads(JsonFormatter().format(rec))
    for fields in (logfmt, as_json):
        assert fields["msg"] == "remediation run ended"
        assert fields["action"] == "free-disk" and fields["run_id"] == "4f2a" and fields["deleted"] == "3"
        assert fields["detail"] == "two words" and fields["none"] == ""
    assert list(logfmt) == list(as_json)  # same keys, same order


def test_a_field_never_overwrites_the_standard_keys() -> None:
    rec = record("real message")
    rec.__dict__.update(kv(msg="forged", level="debug"))
    fields = parse_logfmt(LogfmtFormatter().format(rec))
    assert fields["msg"] == "real message" and fields["level"] == "warn"
    assert fields["msg_"] == "forged" and fields["level_"] == "debug"
