"""Value types of the config: Prometheus durations and byte sizes with bounds, files, regexes, matchers.

Each is an `Annotated` type whose validator raises ValueError in words an operator understands, and whose
JSON Schema says what the YAML may hold (editors validate with it: docs/config.schema.json).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    PlainValidator,
    Strict,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from exporter.core.matchers import Matcher, parse_matcher
from exporter.core.schedule import Cron, Interval, Schedule, parse_schedule
from exporter.core.units import DURATION_PATTERN, SIZE_PATTERN, format_duration, parse_bytes, parse_duration

StrictBool = Annotated[bool, Strict()]
StrictInt = Annotated[int, Strict()]
StrictStr = Annotated[str, Strict()]


class Duration:
    """Annotated metadata: a Prometheus duration string (or YAML `0`) between `low` and `high`, in seconds.

    As in Prometheus, a bare number other than 0 is refused: `timeout: 30` is a mistake, not 30 s.
    """

    def __init__(self, low: str, high: str) -> None:
        self.low, self.high = low, high
        self.low_s, self.high_s = parse_duration(low), parse_duration(high)

    def validate(self, value: Any) -> float:
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            value = "0"
        seconds = parse_duration(value)
        if seconds < self.low_s:
            raise ValueError(f"must be at least {self.low}, got {value!r}")
        if seconds > self.high_s:
            raise ValueError(f"must be at most {self.high}, got {value!r}")
        return seconds

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.validate, serialization=core_schema.plain_serializer_function_ser_schema(format_duration)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "string", "minLength": 1, "pattern": DURATION_PATTERN}, {"const": 0}],
            "description": f"Prometheus duration (e.g. 30s, 5m, 1h30m), {self.low} to {self.high}",
        }


class Size:
    """Annotated metadata: a byte size (`5GB` = 5·10⁹, `5GiB`/`5Gi` = 5·2³⁰, or bytes) up to `high`."""

    def __init__(self, high: str) -> None:
        self.high, self.high_b = high, parse_bytes(high)

    def validate(self, value: Any) -> int:
        size = parse_bytes(value)
        if size > self.high_b:
            raise ValueError(f"must be at most {self.high}, got {value!r}")
        return size

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "string", "pattern": SIZE_PATTERN}, {"type": "integer", "minimum": 0}],
            "description": f"size: bytes, SI (5GB = 5e9) or IEC (5GiB, 5Gi); at most {self.high}",
        }


#: The longest interval schedule: a longer one is more likely a typo than a plan (calendar forms are not bounded).
MAX_SCHEDULE_INTERVAL = "90d"


def _schedule(value: Any) -> Schedule:
    """Checked in UTC here; `RemediationConfig` rebinds cron schedules to `remediation.timezone`."""
    if isinstance(value, Interval | Cron):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 24h or a cron expression like '0 3 * * SUN', got {value!r}")
    schedule = parse_schedule(value)
    if isinstance(schedule, Interval) and schedule.seconds > parse_duration(MAX_SCHEDULE_INTERVAL):
        raise ValueError(f"an interval schedule must be at most {MAX_SCHEDULE_INTERVAL}, got {value!r}")
    return schedule


def _schedule_text(schedule: Schedule) -> str:
    return format_duration(schedule.seconds) if isinstance(schedule, Interval) else schedule.expr


def _ratio(value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _readable(path: str) -> str:
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path}")
    return path


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"bad regular expression {text!r}: {exc}") from None
    return text


def _matcher(value: Any) -> Matcher:
    if isinstance(value, Matcher):
        return value
    return parse_matcher(value)


def _matcher_text(matcher: Matcher) -> str:
    return str(matcher)


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL, got {text!r}")
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty (an empty credential would let anybody in)")
    return text


#: A share of a whole, strictly between 0 and 1 (`0.3` = 30 %).
Ratio = Annotated[
    float,
    Strict(),
    AfterValidator(_ratio),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
]
#: A path the exporter can read now (checked at start-up, so a typo fails `--config.check`).
ReadableFile = Annotated[StrictStr, AfterValidator(_readable)]
#: A Python regular expression that compiles.
Regex = Annotated[StrictStr, AfterValidator(_regex)]
#: An http:// or https:// URL.
HttpURL = Annotated[StrictStr, AfterValidator(_http_url)]
#: An inline secret: empty or whitespace-only is refused (it would turn authentication off).
Secret = Annotated[StrictStr, AfterValidator(_not_blank)]
#: An Alertmanager-style label matcher, written `name="value"`, `name!="v"`, `name=~"re"` or `name!~"re"`.
MatcherField = Annotated[
    Matcher,
    PlainValidator(_matcher),
    PlainSerializer(_matcher_text),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=~|!~|!=|=)",
            "description": 'label matcher: name="v", name!="v", name=~"re", name!~"re"',
        }
    ),
]
#: `schedule`: a Prometheus duration (every interval, counted from the last run) or five cron fields.
ScheduleField = Annotated[
    Schedule,
    PlainValidator(_schedule),
    PlainSerializer(_schedule_text),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "pattern": DURATION_PATTERN},
                {"type": "string", "pattern": r"^\s*\S+(\s+\S+){4}\s*$"},
            ],
            "description": (
                "a Prometheus duration (24h: every interval after the last run, 1m to "
                f"{MAX_SCHEDULE_INTERVAL}) or a five-field cron expression in remediation.timezone "
                "(quoted: '0 3 * * SUN')"
            ),
        }
    ),
]
