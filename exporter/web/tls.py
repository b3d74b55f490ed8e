"""HTTPS for the web server (`--web.config.file`), with certificates re-read when their files change.

cert-manager and similar rotate certificate files in place; exporter-toolkit re-reads them on every
handshake, so operators expect an exporter to pick up a renewed certificate without a restart. Here every
handshake passes through the SNI callback (OpenSSL calls it even when the client sends no server name),
which checks the files' modification times at most once a second and swaps in a freshly built context.
A rotation caught half-written keeps the last good context and logs why.
"""

from __future__ import annotations

import logging
import os
import ssl
import time

from exporter.config import ConfigError
from exporter.core.logs import kv
from exporter.web.webconfig import TLSServerConfig, WebConfig

log = logging.getLogger("exporter.web.tls")

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERIFY = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


def build_context(config: TLSServerConfig) -> ssl.SSLContext:
    """One server context from the files as they are now; ssl errors name the file that caused them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    if config.max_version is not None:
        context.maximum_version = _VERSIONS[config.max_version]
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            [f"tls_server_config.cert_file/key_file: cannot load {config.cert_file} with {config.key_file}: {exc}"]
        ) from None
    context.verify_mode = _VERIFY[config.client_auth_type]
    if config.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                [f"tls_server_config.client_ca_file: cannot load {config.client_ca_file}: {exc}"]
            ) from None
    return context


class ReloadingTLS:
    """The server's SSLContext, replaced on the next handshake after cert, key or CA files change.

    Handshakes run on the event loop's thread (asyncio's SSL transport), so no lock is needed; the check
    is a few `stat` calls at most once a second, and a rebuild reads three small files.
    """

    CHECK_INTERVAL = 1.0

    def __init__(self, config: TLSServerConfig) -> None:
        self.config = config
        self._files = [f for f in (config.cert_file, config.key_file, config.client_ca_file) if f]
        self._stamp = self._stamps()
        self._checked = time.monotonic()
        # The listener keeps this context for good; each handshake is routed to `_current`, which is it
        # until the first reload.
        self.context = build_context(config)
        self.context.sni_callback = self._on_hello
        self._current = self.context

    def _stamps(self) -> tuple[float, ...]:
        stamps = []
        for path in self._files:
            try:
                stamps.append(os.stat(path).st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, rebuilt first if a file changed since the last check."""
        now = time.monotonic()
        if now - self._checked >= self.CHECK_INTERVAL:
            self._checked = now
            stamp = self._stamps()
            if stamp != self._stamp:
                self._reload(stamp)
        return self._current

    def _reload(self, stamp: tuple[float, ...]) -> None:
        try:
            context = build_context(self.config)
        except ConfigError as exc:  # e.g. the new key written before the new certificate: retry next time
            log.error("keeping the previous TLS certificate", extra=kv(err="; ".join(exc.problems)))
            return
        self._current, self._stamp = context, stamp
        log.info("TLS certificate files changed; reloaded", extra=kv(cert_file=self.config.cert_file))

    def _on_hello(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        connection.context = self.current()


def server_context(config: WebConfig) -> ssl.SSLContext | None:
    """The listener's SSLContext for `config`, or None for plain HTTP."""
    if config.tls is None:
        return None
    return ReloadingTLS(config.tls).context
