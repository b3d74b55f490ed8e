"""JSON Schema of the config file, generated from the models: `python -m exporter.config.schema [--check]`.

docs/config.schema.json is this output; editors with yaml-language-server validate and complete a config
against it. A unit test fails when the committed file drifts from the models.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from exporter.config import model as models_module
from exporter.config.model import Config, Model
from exporter.core.units import DURATION_PATTERN, format_duration

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "config.schema.json"
SCHEMA_ID = "https://raw.githubusercontent.com/docker-image-exporter/docker-image-exporter/main/docs/config.schema.json"


def _durations_as_written(schema: dict[str, Any]) -> None:
    """Duration defaults are seconds in the models; the schema shows them as the YAML would say them."""
    for model in schema.get("$defs", {}).values():
        for prop in model.get("properties", {}).values():
            default = prop.get("default")
            if isinstance(default, float) and DURATION_PATTERN in json.dumps(prop):
                prop["default"] = format_duration(default)


def _attribute_docstrings(source: str) -> dict[str, dict[str, str]]:
    """Per class of `source`: each annotated attribute's docstring (the string right after it), cleaned as
    pydantic's `use_attribute_docstrings` does."""
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        docs = found.setdefault(node.name, {})
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return found


def _models() -> list[type[Model]]:
    seen: list[type[Model]] = []
    todo = [Model]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def _describe_fields() -> None:
    """Field descriptions from the attribute docstrings (the first class in each model's MRO that documents the
    field), then every model's validation schema rebuilt with them: twice, so that a model whose schema embeds
    another's is rebuilt after that one."""
    docs = _attribute_docstrings(inspect.getsource(models_module))
    models = _models()
    for cls in models:
        for name, field in cls.model_fields.items():
            if field.description is not None:
                continue
            for base in cls.__mro__:
                if name in docs.get(base.__name__, {}):
                    field.description = docs[base.__name__][name]
                    break
    rebuilt: list[type[BaseModel]] = [*models, Config]
    for _ in range(2):
        for each in rebuilt:
            each.model_rebuild(force=True)


def config_schema() -> dict[str, Any]:
    """The schema of what the YAML may hold (validation mode: inputs, not the parsed values)."""
    _describe_fields()
    schema = Config.model_json_schema(mode="validation")
    _durations_as_written(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def render() -> str:
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is out of date")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m exporter.config.schema", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
