"""`--web.config.file`: the Prometheus exporter-toolkit format, the subset Python's ssl can honour.

Same strictness as the main config (models with unknown keys refused, one ConfigError naming every key);
exporter-toolkit keys we do not implement are refused by name with the reason, not as "unknown key".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainValidator, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from exporter.config.errors import ConfigError, keyed, problems_from
from exporter.config.fields import ReadableFile, StrictStr
from exporter.config.model import Model
from exporter.config.yamlfile import read_yaml

ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_TLS_VERSIONS: tuple[TLSVersion, ...] = ("TLS10", "TLS11", "TLS12", "TLS13")
#: The response headers exporter-toolkit lets `http_server_config.headers` set.
SECURITY_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
#: The bcrypt hashes both exporter-toolkit (Go's x/crypto/bcrypt) and Python's bcrypt verify: version 2a, 2b
#: or 2y, a two-digit cost from 04 to 31, then 22 characters of salt and 31 of hash.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


class _Unsupported:
    """Annotated metadata for an exporter-toolkit key we refuse: any value given is an error with `reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def refuse(self, value: Any) -> Any:
        raise ValueError(self.reason)


def _refuse(reason: str) -> BeforeValidator:
    return BeforeValidator(_Unsupported(reason).refuse)


_PYTHON_SSL_DEFAULTS = "is not supported: Python's ssl defaults are used"


def _client_auth(value: Any) -> Any:
    if value in _UNVERIFIED_CLIENT_AUTH:
        raise ValueError(
            f"{value} is not supported (Python's ssl verifies every client certificate it accepts): "
            "use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    return value


def _bcrypt_hash(value: Any) -> str:
    # the value is never echoed: a hash is a secret's stand-in, and a mistyped one may be a password
    if not isinstance(value, str) or not _BCRYPT_HASH.fullmatch(value):
        raise ValueError(
            "is not a bcrypt hash: want $2y$ (or $2a$/$2b$), a cost 04-31, $ and 53 characters, "
            "as `htpasswd -nBC 10 USER` prints after the colon"
        )
    return value


BcryptHash = Annotated[str, PlainValidator(_bcrypt_hash)]


class TLSServerConfig(Model):
    cert_file: ReadableFile
    """Server certificate (PEM); re-read when the file changes."""
    key_file: ReadableFile
    """Server key (PEM)."""
    client_auth_type: Annotated[ClientAuthType, BeforeValidator(_client_auth)] = "NoClientCert"
    """Whether clients must present a certificate signed by client_ca_file."""
    client_ca_file: ReadableFile | None = None
    """CA for client certificates; required with either verifying client_auth_type."""
    min_version: TLSVersion = "TLS12"
    """Lowest TLS version accepted."""
    max_version: TLSVersion | None = None
    """Highest TLS version accepted."""
    cert: Annotated[
        Any, SkipJsonSchema(), _refuse("is not supported: put the certificate in a file and use cert_file")
    ] = None
    key: Annotated[Any, SkipJsonSchema(), _refuse("is not supported: put the key in a file and use key_file")] = None
    cipher_suites: Annotated[Any, SkipJsonSchema(), _refuse(_PYTHON_SSL_DEFAULTS)] = None
    curve_preferences: Annotated[Any, SkipJsonSchema(), _refuse(_PYTHON_SSL_DEFAULTS)] = None
    prefer_server_cipher_suites: Annotated[Any, SkipJsonSchema(), _refuse("is not supported")] = None
    client_allowed_sans: Annotated[Any, SkipJsonSchema(), _refuse("is not supported")] = None

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            raise keyed("client_ca_file", f"is required with client_auth_type {self.client_auth_type}")
        if self.max_version is not None and _TLS_VERSIONS.index(self.max_version) < _TLS_VERSIONS.index(
            self.min_version
        ):
            raise keyed("max_version", f"{self.max_version} is below min_version {self.min_version}")
        return self


class HTTPServerConfig(Model):
    headers: Mapping[str, StrictStr] = Field(default_factory=dict)
    """Response headers; only the security headers exporter-toolkit allows."""
    http2: Annotated[Any, SkipJsonSchema(), _refuse("is not supported: the server speaks HTTP/1.1")] = None

    @field_validator("headers")
    @classmethod
    def _allowed(cls, headers: Mapping[str, str]) -> Mapping[str, str]:
        for name in headers:
            if name not in SECURITY_HEADERS:
                raise keyed(name, f"not settable here; allowed: {', '.join(SECURITY_HEADERS)}")
        return headers


class WebConfig(Model):
    """What `--web.config.file` asks of the HTTP server; the default is plain HTTP with no extra headers."""

    tls: TLSServerConfig | None = Field(default=None, alias="tls_server_config")
    """HTTPS, optionally with client certificates."""
    http: HTTPServerConfig = Field(default_factory=HTTPServerConfig, alias="http_server_config")
    """HTTP response settings."""
    basic_auth_users: Mapping[StrictStr, BcryptHash] = Field(default_factory=dict)
    """User name -> bcrypt hash; when set, every path needs one of these users (see exporter.web.basicauth)."""

    @field_validator("basic_auth_users")
    @classmethod
    def _sendable_names(cls, users: Mapping[str, str]) -> Mapping[str, str]:
        for name in users:
            if not name or ":" in name:  # basic auth splits user from password at the first ':'
                raise keyed((name,), "a user name must be non-empty and without ':' to be sent in basic auth")
        return users

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Extra response headers as (name, value) pairs."""
        return tuple(self.http.headers.items())


def parse_web_config(data: Any) -> WebConfig:
    """Validate an exporter-toolkit web config; every problem names its key, as in the main config."""
    try:
        return WebConfig.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc)) from None


def load_web_config(path: str | os.PathLike[str] | None) -> WebConfig:
    """Read `--web.config.file`; no file means plain HTTP."""
    if path is None:
        return WebConfig()
    return parse_web_config(read_yaml(path, "--web.config.file"))
