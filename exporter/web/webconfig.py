"""`--web.config.file`: the Prometheus exporter-toolkit format, the subset Python's ssl can honour.

Same strictness as the main config (models with unknown keys refused, one ConfigError naming every key);
exporter-toolkit keys we do not implement are refused by name with the reason, not as "unknown key".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
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
    basic_auth_users: Annotated[
        Any,
        SkipJsonSchema(),
        _refuse(
            "is not supported (bcrypt is not a dependency): use TLS client certificates "
            "(client_auth_type: RequireAndVerifyClientCert) or a proxy; the webhook has its own remediation.auth"
        ),
    ] = None

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
