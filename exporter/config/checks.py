"""Checks on the raw document that must not wait for the models to validate: cross-references and paths.

pydantic runs a model's own checks only once every field of it is valid, and a field validator that reads a
sibling (`routes` reading `actions`) sees nothing when that sibling failed. An operator fixing a config would
then learn of a misspelt route action, of a route whose matchers match every alert, or of a relay rule or
a secret given twice, only in a second round. These checks read the parsed YAML as written, so `parse_config` reports them together with every
field error, whatever else is wrong.

The files the exporter writes are checked here too, when the file names them, without creating anything: a
path is writable when the file exists and may be written, or when the nearest existing folder above it may be
written into (the exporter creates missing parent folders). The state file is replaced through a temporary file beside it, so
its folder must be writable even when the file exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.config.model import (
    DANGLING_REFERENCES,
    FREE_SPACE_GOAL,
    MATCHES_EVERY_ALERT,
    RELAY_HOST_REGEX,
    RELAY_SELF_NAMES,
    RELAY_URL_TEMPLATE,
    Config,
    both_given,
)
from exporter.core.matchers import parse_matcher


def cross_reference_problems(data: Any) -> list[str]:
    """Per route: an `action` naming no action under `remediation.actions`, and matchers that match every
    alert (the route's own rule, which pydantic skips while another key of the route is invalid)."""
    remediation = _section(data, "remediation")
    actions = remediation.get("actions", {})
    routes = remediation.get("routes")
    if not isinstance(routes, list):
        return []  # the section itself is malformed: its own error says so
    names = {str(name) for name in actions} if isinstance(actions, Mapping) else None
    problems: list[str] = []
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        key = f"remediation.routes[{index}]"
        action = route.get("action")
        if names is not None and isinstance(action, str) and action not in names:
            problems.append(f"{key}.action: names no action under remediation.actions: {action!r}")
        problem = _matches_every_alert(route)
        if problem:
            problems.append(f"{key}.matchers: {problem}")
    return problems


def _matches_every_alert(route: Mapping[str, Any]) -> str | None:
    """`RouteConfig`'s rule on the route as written; None when it holds or a matcher is invalid itself."""
    opt_in = route.get("match_any_alert")
    if opt_in is True or opt_in not in (None, False):
        return None  # opted in, or an invalid value that its own error names
    matchers = route.get("matchers")
    if matchers is None:
        return "is required"
    if not isinstance(matchers, list):
        return None
    try:
        parsed = [parse_matcher(m) for m in matchers]
    except (ValueError, TypeError):
        return None
    return None if any(m.requires_label() for m in parsed) else MATCHES_EVERY_ALERT


def section_rule_problems(data: Any) -> list[str]:
    """The cross-key rules of `remediation.auth` and `remediation.relay` on the document as written.

    A rule is judged only on what the document says for sure: a secret given both ways is given both ways
    whatever else is wrong with it, but a peer map that is invalid is not "no peers" (its own error says
    enough, and a rule judged on a guess would name a problem that is not there).
    """
    remediation = _section(data, "remediation")
    problems: list[str] = []
    auth = _section(remediation, "auth")
    if auth.get("bearer_token") is not None and auth.get("bearer_token_file") is not None:
        problems.append(f"remediation.auth.bearer_token: {both_given('bearer_token', 'bearer_token_file')}")
    basic = _section(auth, "basic_auth")
    if basic.get("password") is not None and basic.get("password_file") is not None:
        problems.append(f"remediation.auth.basic_auth.password: {both_given('password', 'password_file')}")
    relay = _section(remediation, "relay")
    template = relay.get("url_template")
    if isinstance(template, str) and "{host}" not in template:
        problems.append(f"remediation.relay.url_template: {RELAY_URL_TEMPLATE}")
    if relay.get("enabled") is True:
        if relay.get("self_names") in (None, []):
            problems.append(f"remediation.relay.self_names: {RELAY_SELF_NAMES}")
        if relay.get("peers") in (None, {}) and relay.get("host_regex") is None:
            problems.append(f"remediation.relay.host_regex: {RELAY_HOST_REGEX}")
    problems.extend(_action_rule_problems(_section(remediation, "actions")))
    return problems


def _action_rule_problems(actions: Mapping[str, Any]) -> list[str]:
    """free_space without a goal and prune_dangling selecting by reference, whatever else the action gets wrong."""
    problems: list[str] = []
    for name, action in actions.items():
        if not isinstance(action, Mapping):
            continue
        kind, select = action.get("type"), action.get("select")
        if (
            kind == "free_space"
            and action.get("target_avail_ratio") is None
            and action.get("target_avail_bytes") is None
        ):
            problems.append(f"remediation.actions.{name}.target_avail_ratio: {FREE_SPACE_GOAL}")
        if kind == "prune_dangling" and isinstance(select, Mapping) and select.get("references"):
            problems.append(f"remediation.actions.{name}.select.references: {DANGLING_REFERENCES}")
    return problems


def path_problems(data: Any, config: Config | None) -> list[str]:
    """`state.path` and, with remediation enabled, `remediation.audit_log`, when written in the file and not
    writable.

    Only paths the operator wrote: the defaults under /var/lib/docker-image-exporter are what the container
    image and the Helm chart prepare, and a metrics-only exporter started by hand without that folder runs as
    it always has (the history kept in memory, a warning when it cannot be saved).
    """
    state, remediation = _section(data, "state"), _section(data, "remediation")
    enabled = config.remediation.enabled if config is not None else remediation.get("enabled") is True
    problems: list[str] = []
    state_path = state.get("path")
    if isinstance(state_path, str) and state_path:
        problem = unwritable(state_path, replaced=True)
        if problem:
            problems.append(f"state.path: {problem} (last-used and arrival times could not be saved)")
    audit_log = remediation.get("audit_log")
    if enabled and isinstance(audit_log, str) and audit_log:
        problem = unwritable(audit_log, replaced=False)
        if problem:
            problems.append(f"remediation.audit_log: {problem} (every remediation run would fail)")
    if enabled:
        problems.extend(_trash_problems(remediation, _section(data, "filesystem")))
    return problems


TRASH_ON_DATA_ROOT = (
    "is on the same filesystem as the engine's data root ({data_root}), which the free_space action {action!r} "
    "frees: every save would fill what the action is emptying; put the trash on another filesystem"
)


def _trash_problems(remediation: Mapping[str, Any], filesystem: Mapping[str, Any]) -> list[str]:
    """`remediation.trash.path`: writable, and not on the data-root filesystem when a free_space action exists.

    The data root is `filesystem.path` when written, else the engine's default; an engine elsewhere is checked
    again before each save (exporter.remediation.trash).
    """
    trash = remediation.get("trash")
    path = trash.get("path") if isinstance(trash, Mapping) else None
    if not isinstance(path, str) or not path:
        return []
    problem = unwritable(str(Path(path) / ".probe"), replaced=True)
    if problem:
        return [f"remediation.trash.path: {problem} (every deletion that needs a save would be skipped)"]
    actions = remediation.get("actions")
    free_space = [
        str(name)
        for name, body in (actions.items() if isinstance(actions, Mapping) else ())
        if isinstance(body, Mapping) and body.get("type") == "free_space"
    ]
    configured = filesystem.get("path")
    data_root = configured if isinstance(configured, str) and configured else DEFAULT_DATA_ROOT
    if free_space and same_filesystem(path, data_root):
        return ["remediation.trash.path: " + TRASH_ON_DATA_ROOT.format(data_root=data_root, action=free_space[0])]
    return []


#: Where dockerd keeps its data unless told otherwise (`docker info`: Docker Root Dir).
DEFAULT_DATA_ROOT = "/var/lib/docker"


def same_filesystem(path: str, data_root: str) -> bool:
    """Whether `path` (or its nearest folder that exists: the trash folder is created on first use) is on the
    filesystem of `data_root`; False when the data root is not here (an engine on another host)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return existing.stat().st_dev == os.stat(data_root).st_dev
    except OSError:
        return False


def unwritable(path: str, *, replaced: bool) -> str | None:
    """Why the exporter cannot write `path`, or None. `replaced`: written by renaming a temporary file over it."""
    target = Path(path)
    if target.is_dir():
        return f"{path} is a directory"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{path} is not writable by this user (uid {os.getuid()})"
    if target.exists() and not replaced:
        return None
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot be created: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: the folder {folder} is not writable by this user (uid {os.getuid()})"
    return None


def _section(data: Any, key: str) -> Mapping[str, Any]:
    section = data.get(key) if isinstance(data, Mapping) else None
    return section if isinstance(section, Mapping) else {}
