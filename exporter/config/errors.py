"""One `ConfigError` listing every problem, each prefixed with the dotted key it concerns.

pydantic reports errors by location tuple and in its own words; operators read dotted keys
(`remediation.actions.keep-five.keep: must be >= 1, got 0`), so every `ValidationError` entry is
rewritten here. Validators that judge several keys at once raise `keyed(...)` to say which key is wrong.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

#: Values of these keys never appear in messages (a mistyped token is still a token).
SECRET_KEYS = frozenset({"bearer_token", "password"})
_KEYED = "config_keyed"


class ConfigError(Exception):
    """Raised with every problem found; each line names the key (`remediation.actions.x.keep`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def keyed(key: str | tuple[int | str, ...], message: str) -> PydanticCustomError:
    """An error about `key` (dotted, or location parts, relative to what is being validated).

    For validators that judge several keys at once and must say which one is wrong.
    """
    parts = tuple(key.split(".")) if isinstance(key, str) else key
    return PydanticCustomError(_KEYED, "{key}: {message}", {"key": dotted(parts), "parts": parts, "message": message})


def dotted(loc: tuple[int | str, ...]) -> str:
    """`("remediation", "routes", 0, "action")` -> `remediation.routes[0].action`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _shown(error: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    if loc and loc[-1] in SECRET_KEYS:
        return "a value of another type"
    value = error.get("input")
    return f"{type(value).__name__}" if isinstance(value, dict | list) else repr(value)


def _describe(error: ErrorDetails, loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str]:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    got = _shown(error, loc)
    if loc and loc[-1] == "[key]":  # a mapping key that is not a string (YAML `5:` rather than `"5":`)
        return loc[:-1], f"keys must be strings, got {got}"
    if kind == _KEYED:
        return (*loc, *ctx["parts"]), str(ctx["message"])
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"]))
    if kind == "extra_forbidden":
        return loc, "unknown key"
    if kind == "missing":
        return loc, "is required"
    if kind == "bool_type":
        return loc, f"expected true or false, got {got}"
    if kind in ("int_type", "int_from_float"):
        return loc, f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"expected a number, got {got}"
    if kind == "string_type":
        return loc, f"expected a string, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return loc, f"must be a mapping, got {type(error.get('input')).__name__}"
    if kind in ("list_type", "tuple_type"):
        return loc, f"expected a list, got {got}"
    if kind == "greater_than_equal":
        return loc, f"must be >= {ctx['ge']}, got {got}"
    if kind == "less_than_equal":
        return loc, f"must be <= {ctx['le']}, got {got}"
    if kind == "literal_error":
        return loc, f"must be one of {ctx['expected']}, got {got}"
    if kind == "union_tag_invalid":
        return (
            *loc,
            str(ctx["discriminator"]).strip("'"),
        ), f"must be one of {ctx['expected_tags']}, got {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        return (*loc, str(ctx["discriminator"]).strip("'")), "is required"
    return loc, str(error["msg"])


def problems_from(exc: ValidationError, unions: Mapping[tuple[str, ...], Collection[str]] | None = None) -> list[str]:
    """Every entry of `exc` as `dotted.key: message`, in pydantic's order, without repeats.

    pydantic puts the discriminator value into locations inside a tagged union (`actions.x.keep_last.keep`);
    `unions` maps each union's container (`("remediation", "actions")`) to its tags, and the tag that follows
    the entry's name is dropped: the operator never wrote it as a key.
    """
    problems: list[str] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        for prefix, tags in (unions or {}).items():
            at = len(prefix) + 1
            if loc[: len(prefix)] == prefix and len(loc) > at and loc[at] in tags:
                loc = loc[:at] + loc[at + 1 :]
        loc, message = _describe(error, loc)
        line = f"{dotted(loc) or '<top level>'}: {message}"
        if line not in problems:
            problems.append(line)
    return problems
