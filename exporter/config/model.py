"""The configuration as frozen pydantic models: one per section, one per action type.

`extra="forbid"` everywhere, so a typo in a safety setting is an error rather than silently ignored.
Each field's docstring becomes its description in docs/config.schema.json (read by `exporter.config.schema`
when it generates the schema, not at import: pydantic's `use_attribute_docstrings` re-reads and tokenises this
file's source for every model, a large share of the exporter's start-up).
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from exporter.config.errors import keyed
from exporter.config.fields import (
    Duration,
    HttpURL,
    MatcherField,
    Ratio,
    ReadableFile,
    Regex,
    ScheduleField,
    Secret,
    Size,
    StrictBool,
    StrictInt,
    StrictStr,
)
from exporter.config.secrets import SecretFileError, read_secret_file
from exporter.core import engineaddress
from exporter.core.schedule import DEFAULT_TIMEZONE, Cron, parse_timezone

ActionType = Literal["prune_dangling", "prune_unused", "keep_last", "free_space", "build_cache", "prune_containers"]
ACTION_TYPES: tuple[ActionType, ...] = get_args(ActionType)


class Model(BaseModel):
    """Frozen, unknown keys refused; descriptions from attribute docstrings (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """`key:` with nothing after it (YAML null) means the default, as it always has here."""
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class DockerConfig(Model):
    host: StrictStr | None = None
    """Engine address (`unix:///var/run/docker.sock`, `tcp://host:2376`); `--docker.host` wins over it."""
    timeout: Annotated[float, Duration("1s", "1h")] = 30.0
    """Per call for the cheap endpoints (lists, inspects, deletes)."""
    disk_usage_timeout: Annotated[float, Duration("1s", "1h")] = 300.0
    """For /system/df and build-cache prune, which can take minutes on big hosts."""
    max_response_bytes: Annotated[int, Size("4GiB"), Field(ge=1 << 20)] = 64 << 20
    """Largest engine answer read (the image listing, /system/df); a larger one fails that read (docker_up 0)."""

    @field_validator("host")
    @classmethod
    def _readable_address(cls, value: str | None) -> str | None:
        """Refused here, at load and `--config.check`, rather than by every engine call later."""
        try:
            engineaddress.parse(value)
        except engineaddress.AddressError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        return value


class RuntimeConfig(Model):
    endpoint: StrictStr | None = None
    """A Kubernetes node's CRI runtime socket instead of a Docker engine (`unix:///run/containerd/containerd.sock`,
    `unix:///var/run/crio/crio.sock`); `--runtime.endpoint` wins over it. Needs the `[cri]` extra."""
    timeout: Annotated[float, Duration("1s", "1h")] = 30.0
    """Deadline of each CRI call."""

    @field_validator("endpoint")
    @classmethod
    def _unix_socket(cls, value: str | None) -> str | None:
        """Runtimes serve the CRI on a unix socket only."""
        if value is not None and not (value.startswith("unix:///") and len(value) > len("unix:///")):
            raise ValueError(f"{value!r}: a CRI endpoint is unix:///path/to/socket")
        return value


class PollConfig(Model):
    interval: Annotated[float, Duration("1s", "1w")] = 30.0
    """Full refresh of images, containers and the filesystem (events refresh sooner)."""
    disk_usage_interval: Annotated[float, Duration("1s", "1w")] = 300.0
    """How often /system/df runs (it is expensive)."""
    disk_usage_min_interval: Annotated[float, Duration("0s", "1w")] = 30.0
    """After images change, /system/df is re-read once its data is at least this old."""
    debounce: Annotated[float, Duration("0s", "1m")] = 0.5
    """A burst of events causes one refresh after this quiet time."""


class FilesystemConfig(Model):
    path: StrictStr | None = None
    """A path on the engine's data-root filesystem; its statvfs feeds docker_filesystem_* and free_space.
    null: the data root the engine reports (docker info: Docker Root Dir)."""


class MetricsConfig(Model):
    per_image: StrictBool = True
    """Per-tag series (docker_image_*); off: totals and per-repository series only."""
    max_image_series: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 2000
    """Cap on per-tag series; the largest images are kept."""


class StateConfig(Model):
    path: StrictStr | None = "/var/lib/docker-image-exporter/state.json"
    """Where last-used and arrival times persist; null keeps them in memory only."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """`path: null` is the one null that is not the default: it keeps the state in memory only, so two
        exporters on one host never share a file by accident."""
        return data


class BasicAuth(Model):
    username: Secret
    """The user Alertmanager sends (http_config.basic_auth.username); must not be empty."""
    password: Annotated[Secret, Field(repr=False)] = ""
    """Inline password; give this or password_file. After loading, holds the password in effect."""
    password_file: ReadableFile | None = None
    """File holding the password (surrounding whitespace stripped; an empty file is refused)."""

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        inline = self.password if "password" in self.model_fields_set else None
        password = _secret(inline, self.password_file, "password", "password_file")
        if password is None:
            raise keyed("password", "is required (password or password_file)")
        object.__setattr__(self, "password", password)
        return self


class AuthConfig(Model):
    bearer_token: Annotated[Secret | None, Field(repr=False)] = None
    """Token Alertmanager sends (http_config.authorization). After loading, holds the token in effect."""
    bearer_token_file: ReadableFile | None = None
    """File holding the token (surrounding whitespace stripped; an empty file is refused)."""
    basic_auth: BasicAuth | None = None
    """Basic auth (http_config.basic_auth)."""

    @model_validator(mode="after")
    def _one_token(self) -> AuthConfig:
        token = _secret(self.bearer_token, self.bearer_token_file, "bearer_token", "bearer_token_file")
        object.__setattr__(self, "bearer_token", token)
        return self


def both_given(key: str, file_key: str) -> str:
    """The message for a secret given inline and in a file (also checked in exporter.config.checks)."""
    return f"give either {key} or {file_key}, not both"


def _secret(inline: str | None, path: str | None, key: str, file_key: str) -> str | None:
    """The secret given inline or in a file (the file form keeps it out of the config)."""
    if inline is not None and path is not None:
        raise keyed(key, both_given(key, file_key))
    if path is None:
        return inline
    try:
        return read_secret_file(path)
    except SecretFileError as exc:
        raise keyed(file_key, str(exc)) from None


def _reference_glob(pattern: str) -> str:
    if not pattern or pattern != "".join(pattern.split()):
        raise ValueError(f"{pattern!r}: image references contain no spaces, so this glob would never match")
    return pattern


def _label_rule(rule: str) -> str:
    key, sep, value = rule.partition("=")
    if not key or key != "".join(key.split()) or (sep and value != value.strip()):
        raise ValueError(f"{rule!r}: want key=value or a bare key, without spaces around them")
    return rule


class ProtectConfig(Model):
    references: tuple[Annotated[StrictStr, AfterValidator(_reference_glob)], ...] = ()
    """Globs on repository:tag never deleted ("*:production", "registry.example.com/base/*")."""
    labels: tuple[Annotated[StrictStr, AfterValidator(_label_rule)], ...] = ()
    """key=value or bare key: images carrying it are never deleted."""
    local_only: StrictBool = False
    """On: tagged images with no repo digest (built or loaded here, never pushed) are never deleted by
    keep_last, prune_unused or free_space. Off by default: on a build host every local build is such an
    image, so the rule kept everything there, and the containerd store and Podman give every image a digest
    (the rule protects nothing). Every plan reports how many images and bytes it kept."""

    def reference_rule(self, reference: str) -> str | None:
        """The glob that protects `repo:tag`, if any."""
        return _glob_matching(reference, self.references)

    def label_rule(self, labels: Mapping[str, str]) -> str | None:
        """The `key=value` (or bare `key`) rule that protects an image with these labels, if any."""
        return _rule_matching(labels, self.labels)


def _glob_matching(reference: str, patterns: tuple[str, ...]) -> str | None:
    """The first glob of `patterns` that `reference` matches (protect and select read globs alike)."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(reference, pattern):
            return pattern
    return None


def _rule_matching(labels: Mapping[str, str], rules: tuple[str, ...]) -> str | None:
    """The first `key=value` (or bare `key`) rule of `rules` that these labels satisfy."""
    for rule in rules:
        key, sep, value = rule.partition("=")
        if key in labels and (not sep or labels[key] == value):
            return rule
    return None


class SelectConfig(Model):
    """The images an action may take: those with a reference matching a glob OR a label matching a rule.

    Globs and label rules are written and matched as in remediation.protect; protection still wins."""

    references: tuple[Annotated[StrictStr, AfterValidator(_reference_glob)], ...] = ()
    """Globs on repository:tag or repository@digest ("ci/*", "*:pr-*"); untagged images have no reference and
    never match."""
    labels: tuple[Annotated[StrictStr, AfterValidator(_label_rule)], ...] = ()
    """key=value or bare key: images carrying it are selected."""

    @model_validator(mode="after")
    def _something(self) -> SelectConfig:
        if not self.references and not self.labels:
            raise ValueError("selects no image: give references and/or labels (omit select to take every image)")
        return self

    def reference_rule(self, reference: str) -> str | None:
        """The glob that selects `repo:tag`, if any."""
        return _glob_matching(reference, self.references)

    def label_rule(self, labels: Mapping[str, str]) -> str | None:
        """The label rule that selects an image with these labels, if any."""
        return _rule_matching(labels, self.labels)

    def describe(self) -> dict[str, list[str]]:
        """The rules as plans and audit lines show them."""
        return {"references": list(self.references), "labels": list(self.labels)}


class ActionBase(Model):
    """What every action type has; each type adds only its own keys."""

    name: SkipJsonSchema[str] = ""
    """Set from the key under remediation.actions."""
    min_age: Annotated[float, Duration("0s", "10y")] = 3600.0
    """Younger images are never candidates (age: latest of created, last tag, arrival here)."""
    max_deletions: Annotated[StrictInt, Field(ge=1, le=100_000)] = 100
    """At most this many deletions per run."""
    schedule: ScheduleField | None = None
    """Also run on its own: an interval (24h, from the last run) or five cron fields ('0 3 * * SUN')."""


class ImageActionBase(ActionBase):
    """What every action on images has."""

    select: SelectConfig | None = None
    """Only images matching these rules (any reference glob or any label rule); omitted: every image.
    remediation.protect still wins."""


FREE_SPACE_GOAL = "is required (or target_avail_bytes, or both)"
DANGLING_REFERENCES = "prune_dangling takes untagged images, which have no reference to match: use select.labels"


class PruneDanglingAction(ImageActionBase):
    """Untagged images."""

    type: Literal["prune_dangling"]

    @model_validator(mode="after")
    def _no_reference_select(self) -> PruneDanglingAction:
        """Untagged images have no reference: a reference glob here is a mistake that selects nothing. Also
        checked on the document as written (exporter.config.checks)."""
        if self.select is not None and self.select.references:
            raise keyed(("select", "references"), DANGLING_REFERENCES)
        return self


class PruneUnusedAction(ImageActionBase):
    """Images no container uses."""

    type: Literal["prune_unused"]


class KeepLastAction(ImageActionBase):
    """Per repository, tags older than the `keep` newest."""

    type: Literal["keep_last"]
    keep: Annotated[StrictInt, Field(ge=1, le=10_000)]
    """How many of the newest tags per repository to keep."""


class FreeSpaceAction(ImageActionBase):
    """Least-recently-used first until the data-root filesystem has the target available."""

    # the schema's form of `_a_goal`
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["target_avail_ratio"]}, {"required": ["target_avail_bytes"]}]}
    )

    type: Literal["free_space"]
    target_avail_ratio: Ratio | None = None
    """Share of the filesystem to have available, between 0 and 1. With target_avail_bytes too, both must hold."""
    target_avail_bytes: Annotated[int, Size("1PB")] | None = None
    """Bytes to have available (SI or IEC size: 50GB, 20GiB). With target_avail_ratio too, both must hold."""

    @model_validator(mode="after")
    def _a_goal(self) -> FreeSpaceAction:
        """Also checked on the document as written (exporter.config.checks)."""
        if self.target_avail_ratio is None and self.target_avail_bytes is None:
            raise keyed("target_avail_ratio", FREE_SPACE_GOAL)
        return self

    def shortfall(self, size: int, avail: int) -> int:
        """Bytes to free before a filesystem of `size` bytes with `avail` available meets every goal (0: met)."""
        missing = 0
        ratio = self.target_avail_ratio
        if ratio is not None and (avail / size if size else 1.0) < ratio:
            missing = max(math.ceil(ratio * size) - avail, 1)
        if self.target_avail_bytes is not None:
            missing = max(missing, self.target_avail_bytes - avail)
        return missing

    def describe_goal(self) -> str:
        """The goal in the config's words (`target_avail_ratio 0.3 and target_avail_bytes 50000000000`)."""
        parts = []
        if self.target_avail_ratio is not None:
            parts.append(f"target_avail_ratio {self.target_avail_ratio}")
        if self.target_avail_bytes is not None:
            parts.append(f"target_avail_bytes {self.target_avail_bytes}")
        return " and ".join(parts)


class BuildCacheAction(ActionBase):
    """Build cache older than min_age, down to keep_storage."""

    type: Literal["build_cache"]
    keep_storage: Annotated[int, Size("1PB")] = 0
    """Build cache to keep (SI or IEC size)."""


class PruneContainersAction(ActionBase):
    """Exited or dead containers whose State.FinishedAt is older than min_age; never running, paused,
    restarting or created ones, never ones with a label matching protect.labels. Volumes stay."""

    type: Literal["prune_containers"]


ActionConfig = Annotated[
    PruneDanglingAction
    | PruneUnusedAction
    | KeepLastAction
    | FreeSpaceAction
    | BuildCacheAction
    | PruneContainersAction,
    Field(discriminator="type"),
]


MATCHES_EVERY_ALERT = (
    'needs a matcher that requires a label value (name="v" or name=~"re" not matching ""): '
    "these match every alert; set match_any_alert: true if that is meant"
)


class RouteConfig(Model):
    # The schema's approximation of `_not_everything`: matchers given and non-empty, or the explicit opt-in.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["matchers"], "properties": {"matchers": {"minItems": 1}}},
                {"required": ["match_any_alert"], "properties": {"match_any_alert": {"const": True}}},
            ]
        }
    )

    matchers: tuple[MatcherField, ...] = ()
    """All must match; at least one must require a label value (name="v" or name=~"re")."""
    match_any_alert: StrictBool = False
    """Opt in to a route without such a matcher, which acts on every alert that reaches it."""
    action: StrictStr
    """A name under remediation.actions."""
    cooldown: Annotated[float, Duration("0s", "1w")] = 600.0
    """After a run, the same route does not start the action again for this long."""

    @model_validator(mode="after")
    def _not_everything(self) -> RouteConfig:
        """Also checked on the document as written (exporter.config.checks), so that a route's other errors
        do not hide it."""
        if self.match_any_alert or any(m.requires_label() for m in self.matchers):
            return self
        if "matchers" not in self.model_fields_set:
            raise keyed("matchers", "is required")
        raise keyed("matchers", MATCHES_EVERY_ALERT)


class ClientTLSConfig(Model):
    """Prometheus's `tls_config` for outgoing HTTPS: whom to trust, and the certificate to present."""

    ca_file: ReadableFile | None = None
    """CA that signed the peers' certificates (default: the system trust store)."""
    cert_file: ReadableFile | None = None
    """Client certificate to present; goes with key_file."""
    key_file: ReadableFile | None = None
    """Client key; goes with cert_file."""

    @model_validator(mode="after")
    def _pair(self) -> ClientTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise keyed("cert_file" if self.cert_file is None else "key_file", "cert_file and key_file go together")
        return self


def _env_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """`${VAR}` expanded from the environment (a DaemonSet pod learns its own node/IP so); empties dropped."""
    expanded = []
    for text in names:
        value = os.path.expandvars(text)
        if "$" in value:
            raise ValueError(f"{text!r} names an environment variable that is not set")
        if value:
            expanded.append(value)
    return tuple(expanded)


RELAY_URL_TEMPLATE = "must contain {host}"
RELAY_SELF_NAMES = "is required when relay is enabled: the host label values that mean this host"
RELAY_HOST_REGEX = "is required when relay is enabled without peers: the host label values to relay to"


class RelayConfig(Model):
    """Fleet mode: alerts about another host are relayed to that host's exporter instead of run here."""

    enabled: StrictBool = False
    """Relay alerts about other hosts to their exporters."""
    host_label: StrictStr = "instance"
    """The alert label that names the host."""
    self_names: Annotated[tuple[StrictStr, ...], AfterValidator(_env_names)] = ()
    """Label values that mean this host; ${VAR} is expanded from the environment."""
    peers: Mapping[StrictStr, HttpURL] = Field(default_factory=dict)
    """Explicit label value -> webhook URL map; when set, only these peers are used."""
    url_template: StrictStr = "http://{host}/webhook/alertmanager"
    """The peer's webhook URL; must contain {host}."""
    host_regex: Regex | None = None
    """Label values allowed into url_template (the token is forwarded to the peer); required without peers, so
    no default lets an alert pick any host:port."""
    timeout: Annotated[float, Duration("100ms", "1h")] = 10.0
    """Per relay request."""
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig, alias="tls_config")
    """TLS for https:// peers."""

    @model_validator(mode="after")
    def _usable(self) -> RelayConfig:
        """Also checked on the document as written (exporter.config.checks), so that other errors in this
        section do not hide these."""
        if "{host}" not in self.url_template:
            raise keyed("url_template", RELAY_URL_TEMPLATE)
        if self.enabled and not self.self_names:
            raise keyed("self_names", RELAY_SELF_NAMES)
        if self.enabled and not self.peers and self.host_regex is None:
            raise keyed("host_regex", RELAY_HOST_REGEX)
        return self


class TrashConfig(Model):
    """Where images with no known registry copy are saved (`docker save`) before they are deleted, so a restore
    can load them back."""

    path: StrictStr
    """A folder for the archives, on another filesystem than the engine's data root when a free_space action
    exists (checked at load)."""
    max_bytes: Annotated[int, Size("1PB"), Field(ge=1 << 20)]
    """The most the archives may take together (SI or IEC size); the oldest go first to make room, and an image
    that cannot fit is not deleted."""
    keep_for: Annotated[float, Duration("1m", "10y")] = 7 * 86_400.0
    """How long an archive is kept; older ones are removed."""


class RegistryCheckConfig(Model):
    """Confirm a registry copy of an image with a manifest HEAD before trusting its repo digest."""

    docker_config: ReadableFile | None = None
    """A docker config.json whose `auths` hold registry credentials; each goes only to the registry it names."""
    cache_for: Annotated[float, Duration("0s", "1w")] = 3600.0
    """How long an answer (copy or no copy) is reused; unknown answers are not kept."""
    timeout: Annotated[float, Duration("100ms", "1m")] = 5.0
    """Per request to a registry."""


class RemediationConfig(Model):
    enabled: StrictBool = False
    """Turn the webhook and actions on."""
    dry_run: StrictBool = False
    """Plan and report, delete nothing (a per-call ?dry_run=false cannot override it)."""
    auth: AuthConfig = Field(default_factory=AuthConfig, validate_default=True)
    """How Alertmanager authenticates; required when enabled."""
    scope: tuple[MatcherField, ...] = ()
    """Matchers every alert must match to be acted on here; others are acknowledged as out_of_scope."""
    protect: ProtectConfig = Field(default_factory=ProtectConfig)
    """Images never deleted."""
    audit_log: StrictStr = "/var/lib/docker-image-exporter/audit.jsonl"
    """One JSON line per deletion and skip."""
    actions: Mapping[str, ActionConfig] = Field(default_factory=dict)
    """Named actions that routes and the API can run."""
    routes: tuple[RouteConfig, ...] = ()
    """Which alerts run which action."""
    max_body_bytes: Annotated[int, Size("64MiB")] = 1 << 20
    """Larger webhook bodies get 413."""
    relay: RelayConfig = Field(default_factory=RelayConfig)
    """Fleet mode."""
    timezone: StrictStr = DEFAULT_TIMEZONE
    """IANA timezone (Europe/Berlin) of cron schedules; the default UTC has no DST."""
    registry_check: RegistryCheckConfig | None = None
    """Confirm registry copies with a manifest HEAD (null: off; a repo digest is then taken as a copy on the
    classic store). With a trash, an image whose copy is not confirmed is saved first."""
    trash: TrashConfig | None = None
    """Save images with no known registry copy before deleting them (null: off). A save that fails means no
    deletion of that image."""

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        parse_timezone(name)
        return name

    @model_validator(mode="after")
    def _cron_in_timezone(self) -> RemediationConfig:
        """Cron schedules were checked in UTC; evaluate them in `timezone` (validated above)."""
        rebound = {
            name: action.model_copy(update={"schedule": Cron(action.schedule.expr, self.timezone)})
            for name, action in self.actions.items()
            if isinstance(action.schedule, Cron) and action.schedule.tz != self.timezone
        }
        if rebound:
            object.__setattr__(self, "actions", {**self.actions, **rebound})
        return self

    @field_validator("actions", mode="before")
    @classmethod
    def _name_actions(cls, value: Any) -> Any:
        """Each action learns its name from its key (a `name:` inside would be an unknown key)."""
        if not isinstance(value, Mapping):
            return value
        named = {}
        for key, body in value.items():
            if isinstance(body, Mapping) and "name" in body:
                raise keyed(f"{key}.name", "unknown key (an action's name is its key under actions)")
            named[key] = {**body, "name": str(key)} if isinstance(body, Mapping) else body
        return named

    @field_validator("auth")
    @classmethod
    def _auth_when_enabled(cls, auth: AuthConfig, info: ValidationInfo) -> AuthConfig:
        if info.data.get("enabled") and auth.bearer_token is None and auth.basic_auth is None:
            raise ValueError("is required when remediation is enabled (bearer_token[_file] or basic_auth)")
        return auth

    @field_validator("routes")
    @classmethod
    def _known_actions(cls, routes: tuple[RouteConfig, ...], info: ValidationInfo) -> tuple[RouteConfig, ...]:
        """Checked here, not after the model, so it is reported together with any other problem."""
        actions = info.data.get("actions")
        if actions is None:  # actions are invalid themselves: already reported
            return routes
        for index, route in enumerate(routes):
            if route.action not in actions:
                raise keyed((index, "action"), f"names no action under remediation.actions: {route.action!r}")
        return routes


class Config(Model):
    """docker-image-exporter configuration (--config.file)."""

    docker: DockerConfig = Field(default_factory=DockerConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    filesystem: FilesystemConfig = Field(default_factory=FilesystemConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
