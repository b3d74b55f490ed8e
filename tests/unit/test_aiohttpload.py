"""aiohttp imported without loading the CA bundle into its client's default contexts, and loaded before use.

In a fresh interpreter each: the test process has imported aiohttp already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REAL = r"""
import ssl
from exporter.web import aiohttpload
aiohttpload.import_aiohttp()
import aiohttp.connector as c
print(aiohttpload.deferred_contexts(), c._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
aiohttpload.load_deferred_trust()
print(aiohttpload.deferred_contexts(), c._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"] > 0,
      c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"] > 0, "set_default_verify_paths" in ssl.SSLContext.__dict__)
"""

# a stand-in aiohttp whose import builds one context itself and one in another thread
FAKE = r"""
import ssl, threading
here = ssl.create_default_context()
box = {}
thread = threading.Thread(target=lambda: box.update(ctx=ssl.create_default_context()))
thread.start()
thread.join()
there = box["ctx"]
"""

PROBE_FAKE = r"""
from exporter.web import aiohttpload
aiohttpload.import_aiohttp()
import aiohttp
print(aiohttpload.deferred_contexts(), aiohttp.here.cert_store_stats()["x509_ca"], aiohttp.there.cert_store_stats()["x509_ca"] > 0)
aiohttpload.load_deferred_trust()
print(aiohttp.here.cert_store_stats()["x509_ca"] > 0)
"""


def run(code: str, path: str | None = None) -> list[str]:
    env_path = [path] if path else []
    code = f"import sys; sys.path[:0] = {env_path!r}\n" + code
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")


def test_aiohttps_default_contexts_get_their_ca_certificates_only_when_loaded() -> None:
    out = run(REAL)
    assert out[0] == "2 0", "two contexts deferred, no CA loaded"
    assert out[1] == "0 True True False", "both loaded in place; ssl.SSLContext restored"


def test_only_the_importing_thread_is_deferred(tmp_path: Path) -> None:
    (tmp_path / "aiohttp").mkdir()
    (tmp_path / "aiohttp" / "__init__.py").write_text(FAKE)
    out = run(PROBE_FAKE, str(tmp_path))
    assert out[0] == "1 0 True", "the importer's context deferred; another thread's loaded at once"
    assert out[1] == "True"
