"""Imports aiohttp without reading the system's CA bundle twice on the way to `/-/ready`.

aiohttp's client module builds two default SSLContexts when it is imported, each loading every system CA
certificate: about a fifth of the exporter's import time, for a client only fleet mode's relay uses (the
listener's own TLS context comes from `--web.config.file`). `import_aiohttp` lets those two contexts be
built without their CA certificates, and `load_deferred_trust` loads them into the same objects before any
client connection needs them (`RelayClient.start`). Only the importing thread is affected: another thread
building a context meanwhile (the first reads' engine client, over TLS) gets the real call.
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

_lock = threading.Lock()
#: Contexts built during the import whose default verify paths are still to be loaded.
_deferred: list[ssl.SSLContext] = []


def import_aiohttp() -> None:
    """Import aiohttp (once), deferring the CA loading of the contexts its import builds."""
    if "aiohttp" in sys.modules:
        return
    importer = threading.get_ident()
    real = ssl.SSLContext.set_default_verify_paths
    shadowed = "set_default_verify_paths" in ssl.SSLContext.__dict__

    def deferred(self: ssl.SSLContext) -> None:
        if threading.get_ident() != importer:
            real(self)
            return
        with _lock:
            _deferred.append(self)

    ssl.SSLContext.set_default_verify_paths = deferred  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401  (imported for its side effect on sys.modules)
    finally:
        if shadowed:
            ssl.SSLContext.set_default_verify_paths = real  # type: ignore[method-assign]
        else:
            del ssl.SSLContext.set_default_verify_paths


def load_deferred_trust() -> None:
    """Load the system CA certificates into the contexts `import_aiohttp` built without them (blocking I/O:
    call it from a thread). Idempotent."""
    with _lock:
        pending, _deferred[:] = list(_deferred), []
    for context in pending:
        _set_default_verify_paths(context)


def deferred_contexts() -> int:
    """How many contexts still wait for their CA certificates (for tests)."""
    with _lock:
        return len(_deferred)


def _set_default_verify_paths(context: Any) -> None:
    ssl.SSLContext.set_default_verify_paths(context)
