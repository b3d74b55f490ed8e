"""Configuration: declarative models (model.py), errors that name the key, a strict YAML reader.

`load_config` is what start-up and `--config.check` both run, so a config that passes the check starts, and
one that fails lists every problem at once (checks.py: cross-references and writable paths too).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pydantic import TypeAdapter, ValidationError

from exporter.config.checks import cross_reference_problems, path_problems, section_rule_problems
from exporter.config.errors import ConfigError, problems_from
from exporter.config.model import (
    ACTION_TYPES,
    ActionBase,
    ActionConfig,
    ActionType,
    AuthConfig,
    BasicAuth,
    BuildCacheAction,
    ClientTLSConfig,
    Config,
    DockerConfig,
    FilesystemConfig,
    FreeSpaceAction,
    ImageActionBase,
    KeepLastAction,
    MetricsConfig,
    PollConfig,
    ProtectConfig,
    PruneContainersAction,
    PruneDanglingAction,
    PruneUnusedAction,
    RegistryCheckConfig,
    RelayConfig,
    RemediationConfig,
    RouteConfig,
    SelectConfig,
    StateConfig,
    TrashConfig,
)
from exporter.config.secrets import SecretFileError, read_secret_file
from exporter.config.yamlfile import read_yaml

_UNIONS: dict[tuple[str, ...], frozenset[str]] = {("remediation", "actions"): frozenset(ACTION_TYPES)}


@functools.cache
def _actions() -> TypeAdapter[dict[str, ActionConfig]]:
    """Built on first use: `make_action` serves code and tests, and building it costs start-up time."""
    return TypeAdapter[dict[str, ActionConfig]](dict[str, ActionConfig])


def parse_config(data: Any) -> Config:
    """Validate a parsed YAML document into a Config, or raise ConfigError listing every problem.

    Every problem in one round: the field errors, the cross-references and the writability of the files the
    exporter writes (exporter.config.checks) are all collected before anything is raised.
    """
    data = {} if data is None else data
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = problems_from(exc, _UNIONS)
    for problem in (*cross_reference_problems(data), *section_rule_problems(data), *path_problems(data, config)):
        if problem not in problems:
            problems.append(problem)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the YAML file; no file means all defaults (remediation off)."""
    if path is None:
        return parse_config({})
    return parse_config(read_yaml(path, "--config.file"))


def make_action(name: str, **fields: Any) -> ActionConfig:
    """One validated action, as if written under `remediation.actions.<name>` (for code and tests)."""
    try:
        return _actions().validate_python({name: {**fields, "name": name}})[name]
    except ValidationError as exc:
        problems = problems_from(exc, {(): frozenset(ACTION_TYPES)})
        raise ConfigError([f"remediation.actions.{p}" for p in problems]) from None


__all__ = [
    "ACTION_TYPES",
    "ActionBase",
    "ActionConfig",
    "ActionType",
    "AuthConfig",
    "BasicAuth",
    "BuildCacheAction",
    "ClientTLSConfig",
    "Config",
    "ConfigError",
    "DockerConfig",
    "FilesystemConfig",
    "FreeSpaceAction",
    "ImageActionBase",
    "KeepLastAction",
    "MetricsConfig",
    "PollConfig",
    "ProtectConfig",
    "PruneContainersAction",
    "PruneDanglingAction",
    "PruneUnusedAction",
    "RegistryCheckConfig",
    "RelayConfig",
    "RemediationConfig",
    "RouteConfig",
    "SecretFileError",
    "SelectConfig",
    "StateConfig",
    "TrashConfig",
    "load_config",
    "make_action",
    "parse_config",
    "read_secret_file",
]
