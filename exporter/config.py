"""Configuration: strict YAML schema, errors that name the key, and frozen settings objects.

Validation collects every problem before failing, so an operator fixes a config in one pass; unknown keys
are errors (a typo in a safety setting must never be silently ignored).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from exporter.remediation.matchers import Matcher, parse_matcher
from exporter.units import parse_bytes, parse_duration

ActionType = Literal["prune_dangling", "prune_unused", "keep_last", "free_space", "build_cache"]
ACTION_TYPES: tuple[ActionType, ...] = get_args(ActionType)

T = TypeVar("T")


class ConfigError(Exception):
    """Raised with every problem found; each line names the key (`remediation.actions.x.keep`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class DockerConfig:
    host: str | None = None
    timeout: float = 30.0
    disk_usage_timeout: float = 300.0


@dataclass(frozen=True)
class PollConfig:
    interval: float = 30.0
    disk_usage_interval: float = 300.0
    disk_usage_min_interval: float = 30.0
    debounce: float = 0.5


@dataclass(frozen=True)
class FilesystemConfig:
    path: str = "/var/lib/docker"


@dataclass(frozen=True)
class MetricsConfig:
    per_image: bool = True
    max_image_series: int = 2000


@dataclass(frozen=True)
class StateConfig:
    path: str | None = "/var/lib/docker-image-exporter/state.json"


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str


@dataclass(frozen=True)
class AuthConfig:
    bearer_token: str | None = None
    basic_auth: BasicAuth | None = None


@dataclass(frozen=True)
class ProtectConfig:
    references: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    local_only: bool = True

    def reference_rule(self, reference: str) -> str | None:
        """The glob that protects `repo:tag`, if any."""
        for pattern in self.references:
            if fnmatch.fnmatchcase(reference, pattern):
                return pattern
        return None

    def label_rule(self, labels: Mapping[str, str]) -> str | None:
        """The `key=value` (or bare `key`) rule that protects an image with these labels, if any."""
        for rule in self.labels:
            key, sep, value = rule.partition("=")
            if key in labels and (not sep or labels[key] == value):
                return rule
        return None


@dataclass(frozen=True)
class ActionConfig:
    name: str
    type: ActionType
    min_age: float = 3600.0
    keep: int = 0
    target_avail_ratio: float = 0.0
    keep_storage: int = 0
    max_deletions: int = 100
    schedule: float | None = None


@dataclass(frozen=True)
class RouteConfig:
    matchers: tuple[Matcher, ...]
    action: str
    cooldown: float = 600.0


@dataclass(frozen=True)
class ClientTLSConfig:
    """Prometheus's `tls_config` for outgoing HTTPS: whom to trust, and the certificate to present."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class RelayConfig:
    """Fleet mode: alerts about another host are relayed to that host's exporter instead of run here."""

    enabled: bool = False
    host_label: str = "instance"
    self_names: tuple[str, ...] = ()
    peers: Mapping[str, str] = field(default_factory=dict)
    url_template: str = "http://{host}/webhook/alertmanager"
    host_regex: str | None = None  # required without `peers`: no default lets an alert pick any host:port
    timeout: float = 10.0
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass(frozen=True)
class RemediationConfig:
    enabled: bool = False
    dry_run: bool = False
    auth: AuthConfig = field(default_factory=AuthConfig)
    scope: tuple[Matcher, ...] = ()
    protect: ProtectConfig = field(default_factory=ProtectConfig)
    audit_log: str = "/var/lib/docker-image-exporter/audit.jsonl"
    actions: Mapping[str, ActionConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    max_body_bytes: int = 1 << 20
    relay: RelayConfig = field(default_factory=RelayConfig)


@dataclass(frozen=True)
class Config:
    docker: DockerConfig = field(default_factory=DockerConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    filesystem: FilesystemConfig = field(default_factory=FilesystemConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    remediation: RemediationConfig = field(default_factory=RemediationConfig)


class _Section:
    """Reads one mapping of the YAML, recording problems under its dotted path."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", f"must be a mapping, got {type(data).__name__}")
            data = {}
        self.data: Mapping[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else (self.path or key)

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.key_path(key) or '<top level>'}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def section(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key), self.key_path(key), self.problems)

    def value(self, key: str, default: T, convert: Callable[[Any], T]) -> T:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return convert(self.data[key])
        except (ValueError, TypeError) as exc:
            self.error(key, str(exc))
            return default

    def required(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        if not self.has(key):
            self.seen.add(key)
            self.error(key, "is required")
            return default
        return self.value(key, default, convert)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.error(str(key), "unknown key")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _int(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value

    return convert


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number between 0 and 1, got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value}")
    return float(value)


def _duration(minimum: float = 0.0) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g}s, got {value!r}")
        return seconds

    return convert


def _size(value: Any) -> int:
    return parse_bytes(value)


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {value!r}")
    return value


def _readable_file(value: Any) -> str:
    path = _str(value)
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path}")
    return path


def _regex(value: Any) -> str:
    text = _str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"bad regular expression {text!r}: {exc}") from None
    return text


def _matchers(value: Any) -> tuple[Matcher, ...]:
    return tuple(parse_matcher(text) for text in _str_list(value))


def _secret(section: _Section, key: str, file_key: str) -> str | None:
    """A secret given inline or as a file path (the file form keeps it out of the config)."""
    inline = section.value(key, None, _str)
    path = section.value(file_key, None, _str)
    if inline is not None and path is not None:
        section.error(key, f"give either {key} or {file_key}, not both")
    if path is None:
        return inline
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        section.error(file_key, f"cannot read {path}: {exc.strerror}")
        return None


def _auth(section: _Section) -> AuthConfig:
    token = _secret(section, "bearer_token", "bearer_token_file")
    basic = None
    if section.has("basic_auth"):
        b = section.section("basic_auth")
        username = b.required("username", _str, "")
        password = _secret(b, "password", "password_file")
        if password is None:
            b.error("password", "is required (password or password_file)")
        b.finish()
        basic = BasicAuth(username, password or "")
    else:
        section.seen.add("basic_auth")
    section.finish()
    return AuthConfig(bearer_token=token, basic_auth=basic)


def _action(name: str, s: _Section) -> ActionConfig:
    kind = s.required("type", _str, "prune_dangling")
    if kind not in ACTION_TYPES:
        s.error("type", f"must be one of {', '.join(ACTION_TYPES)}, got {kind!r}")
        kind = "prune_dangling"
    action = ActionConfig(
        name=name,
        type=kind,  # type: ignore[arg-type]
        min_age=s.value("min_age", 3600.0, _duration()),
        max_deletions=s.value("max_deletions", 100, _int(1)),
        schedule=s.value("schedule", None, _duration(60.0)),
    )
    extra: dict[str, Any] = {}
    if kind == "keep_last":
        extra["keep"] = s.required("keep", _int(1), 1)
    elif kind == "free_space":
        extra["target_avail_ratio"] = s.required("target_avail_ratio", _ratio, 0.5)
    elif kind == "build_cache":
        extra["keep_storage"] = s.value("keep_storage", 0, _size)
    s.finish()
    return ActionConfig(**{**action.__dict__, **extra})


def _env_names(value: Any) -> tuple[str, ...]:
    """Strings with `${VAR}` expanded from the environment (a DaemonSet pod learns its own node/IP so)."""
    names = []
    for text in _str_list(value):
        expanded = os.path.expandvars(text)
        if "$" in expanded:
            raise ValueError(f"{text!r} names an environment variable that is not set")
        if expanded:
            names.append(expanded)
    return tuple(names)


def _client_tls(s: _Section) -> ClientTLSConfig:
    tls = ClientTLSConfig(
        ca_file=s.value("ca_file", None, _readable_file),
        cert_file=s.value("cert_file", None, _readable_file),
        key_file=s.value("key_file", None, _readable_file),
    )
    if ("cert_file" in s.data) != ("key_file" in s.data):
        s.error("cert_file" if "cert_file" not in s.data else "key_file", "cert_file and key_file go together")
    s.finish()
    return tls


def _relay(s: _Section) -> RelayConfig:
    peers_raw: Any = s.value("peers", {}, lambda v: v)
    peers: dict[str, str] = {}
    if not isinstance(peers_raw, Mapping):
        s.error("peers", "must be a mapping of host label value to webhook URL")
    else:
        for host, url in peers_raw.items():
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                s.error(f"peers.{host}", f"must be an http(s) URL, got {url!r}")
            else:
                peers[str(host)] = url
    relay = RelayConfig(
        enabled=s.value("enabled", False, _bool),
        host_label=s.value("host_label", "instance", _str),
        self_names=s.value("self_names", (), _env_names),
        peers=peers,
        url_template=s.value("url_template", RelayConfig.url_template, _str),
        host_regex=s.value("host_regex", None, _regex),
        timeout=s.value("timeout", 10.0, _duration(0.1)),
        tls=_client_tls(s.section("tls_config")),
    )
    if "{host}" not in relay.url_template:
        s.error("url_template", "must contain {host}")
    if relay.enabled and not relay.self_names:
        s.error("self_names", "is required when relay is enabled: the host label values that mean this host")
    if relay.enabled and not relay.peers and relay.host_regex is None:
        s.error("host_regex", "is required when relay is enabled without peers: the host label values to relay to")
    s.finish()
    return relay


def _remediation(s: _Section) -> RemediationConfig:
    enabled = s.value("enabled", False, _bool)
    auth_section = s.section("auth")
    auth = _auth(auth_section)
    if enabled and auth.bearer_token is None and auth.basic_auth is None:
        s.error("auth", "is required when remediation is enabled (bearer_token[_file] or basic_auth)")
    protect_s = s.section("protect")
    protect = ProtectConfig(
        references=protect_s.value("references", (), _str_list),
        labels=protect_s.value("labels", (), _str_list),
        local_only=protect_s.value("local_only", True, _bool),
    )
    protect_s.finish()
    actions: dict[str, ActionConfig] = {}
    actions_s = s.section("actions")
    for name in actions_s.data:
        actions[str(name)] = _action(str(name), actions_s.section(str(name)))
    routes: list[RouteConfig] = []
    s.seen.add("routes")
    raw_routes = s.data.get("routes") or []
    if not isinstance(raw_routes, list):
        s.error("routes", "must be a list")
        raw_routes = []
    for index, raw in enumerate(raw_routes):
        r = _Section(raw, s.key_path(f"routes[{index}]"), s.problems)
        action = r.required("action", _str, "")
        if action and action not in actions:
            r.error("action", f"names no action under remediation.actions: {action!r}")
        routes.append(
            RouteConfig(
                matchers=r.required("matchers", _matchers, ()),
                action=action,
                cooldown=r.value("cooldown", 600.0, _duration()),
            )
        )
        r.finish()
    config = RemediationConfig(
        enabled=enabled,
        dry_run=s.value("dry_run", False, _bool),
        auth=auth,
        scope=s.value("scope", (), _matchers),
        protect=protect,
        audit_log=s.value("audit_log", RemediationConfig.audit_log, _str),
        actions=actions,
        routes=tuple(routes),
        max_body_bytes=s.value("max_body_bytes", 1 << 20, _size),
        relay=_relay(s.section("relay")),
    )
    s.finish()
    return config


def parse_config(data: Any) -> Config:
    """Validate a parsed YAML document into a Config, or raise ConfigError listing every problem."""
    problems: list[str] = []
    top = _Section(data, "", problems)

    d = top.section("docker")
    docker = DockerConfig(
        host=d.value("host", None, _str),
        timeout=d.value("timeout", 30.0, _duration(1.0)),
        disk_usage_timeout=d.value("disk_usage_timeout", 300.0, _duration(1.0)),
    )
    d.finish()

    p = top.section("poll")
    poll = PollConfig(
        interval=p.value("interval", 30.0, _duration(1.0)),
        disk_usage_interval=p.value("disk_usage_interval", 300.0, _duration(1.0)),
        disk_usage_min_interval=p.value("disk_usage_min_interval", 30.0, _duration(0.0)),
        debounce=p.value("debounce", 0.5, _duration(0.0)),
    )
    p.finish()

    f = top.section("filesystem")
    filesystem = FilesystemConfig(path=f.value("path", "/var/lib/docker", _str))
    f.finish()

    m = top.section("metrics")
    metrics = MetricsConfig(
        per_image=m.value("per_image", True, _bool),
        max_image_series=m.value("max_image_series", 2000, _int(0)),
    )
    m.finish()

    st = top.section("state")
    state = StateConfig(path=st.value("path", StateConfig.path, _str))
    st.finish()

    remediation = _remediation(top.section("remediation"))
    top.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        docker=docker, poll=poll, filesystem=filesystem, metrics=metrics, state=state, remediation=remediation
    )


def _read_yaml(path: str | os.PathLike[str], flag: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{flag}: cannot read {path}: {exc.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{flag}: {path} is not valid YAML: {exc}"]) from None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the YAML file; no file means all defaults (remediation off)."""
    if path is None:
        return parse_config({})
    return parse_config(_read_yaml(path, "--config.file"))


# --------------------------------------------------------------------------------------------------
# --web.config.file: the Prometheus exporter-toolkit format, the subset Python's ssl can honour
# --------------------------------------------------------------------------------------------------
ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
#: The response headers exporter-toolkit lets `http_server_config.headers` set.
SECURITY_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
# exporter-toolkit keys we do not implement: refused by name rather than as "unknown key".
_UNSUPPORTED_WEB_KEYS = {
    "basic_auth_users": "is not supported (bcrypt is not a dependency): use TLS client certificates "
    "(client_auth_type: RequireAndVerifyClientCert) or a proxy; the webhook has its own remediation.auth",
    "tls_server_config.cert": "is not supported: put the certificate in a file and use cert_file",
    "tls_server_config.key": "is not supported: put the key in a file and use key_file",
    "tls_server_config.cipher_suites": "is not supported: Python's ssl defaults are used",
    "tls_server_config.curve_preferences": "is not supported: Python's ssl defaults are used",
    "tls_server_config.prefer_server_cipher_suites": "is not supported",
    "tls_server_config.client_allowed_sans": "is not supported",
    "http_server_config.http2": "is not supported: the server speaks HTTP/1.1",
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str
    key_file: str
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str | None = None
    min_version: TLSVersion = "TLS12"
    max_version: TLSVersion | None = None


@dataclass(frozen=True)
class WebConfig:
    """What `--web.config.file` asks of the HTTP server; the default is plain HTTP with no extra headers."""

    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _str(value)
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {text!r}")
        return text

    return convert


def _refuse_unsupported(section: _Section, prefix: str) -> None:
    for key in list(section.data):
        reason = _UNSUPPORTED_WEB_KEYS.get(f"{prefix}{key}")
        if reason is not None:
            section.seen.add(str(key))
            section.error(str(key), reason)


def parse_web_config(data: Any) -> WebConfig:
    """Validate an exporter-toolkit web config; every problem names its key, as in the main config."""
    problems: list[str] = []
    top = _Section(data, "", problems)
    _refuse_unsupported(top, "")
    tls = None
    if top.has("tls_server_config"):
        t = top.section("tls_server_config")
        _refuse_unsupported(t, "tls_server_config.")
        cert = t.required("cert_file", _readable_file, "")
        key = t.required("key_file", _readable_file, "")
        auth: Any = "NoClientCert"
        if t.data.get("client_auth_type") in _UNVERIFIED_CLIENT_AUTH:
            t.seen.add("client_auth_type")
            t.error(
                "client_auth_type",
                f"{t.data['client_auth_type']} is not supported (Python's ssl verifies every client "
                "certificate it accepts): use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            )
        else:
            auth = t.value("client_auth_type", "NoClientCert", _choice(get_args(ClientAuthType)))
        ca = t.value("client_ca_file", None, _readable_file)
        if auth != "NoClientCert" and ca is None and "client_ca_file" not in t.data:
            t.error("client_ca_file", f"is required with client_auth_type {auth}")
        versions = get_args(TLSVersion)
        low: Any = t.value("min_version", "TLS12", _choice(versions))
        high: Any = t.value("max_version", None, _choice(versions))
        if high is not None and versions.index(high) < versions.index(low):
            t.error("max_version", f"{high} is below min_version {low}")
        t.finish()
        tls = TLSServerConfig(cert, key, auth, ca, low, high)
    headers: list[tuple[str, str]] = []
    if top.has("http_server_config"):
        h = top.section("http_server_config")
        _refuse_unsupported(h, "http_server_config.")
        raw: Mapping[str, Any] = h.value("headers", {}, _mapping)
        for name, value in raw.items():
            if name not in SECURITY_HEADERS:
                h.error(f"headers.{name}", f"not settable here; allowed: {', '.join(SECURITY_HEADERS)}")
            elif not isinstance(value, str):
                h.error(f"headers.{name}", f"expected a string, got {value!r}")
            else:
                headers.append((name, value))
        h.finish()
    top.finish()
    if problems:
        raise ConfigError(problems)
    return WebConfig(tls, tuple(headers))


def load_web_config(path: str | os.PathLike[str] | None) -> WebConfig:
    """Read `--web.config.file`; no file means plain HTTP."""
    if path is None:
        return WebConfig()
    return parse_web_config(_read_yaml(path, "--web.config.file"))
