"""Confirming a registry copy: a manifest `HEAD` for an image's repo digest (`remediation.registry_check`).

A repo digest names where an image was pulled from or pushed to; whether the registry still holds it is only
known by asking. `HEAD /v2/<repository>/manifests/<digest>` answers 200 (a copy: a restore can pull it), 404
(no copy) or something else (unknown). The trash saves an image whose copy is not confirmed.

Credentials come from a docker `config.json` (`auths.<registry>.auth`, base64 `user:password`, or
`username`/`password`), and go **only** to the registry the reference names, matched by exact host:port:
never to another registry, never to a token server on another host (such a registry is asked anonymously),
never over a redirect. Plain HTTP is used only for loopback registries (as dockerd treats them), HTTPS
elsewhere. Answers are cached for `cache_for`; unknown answers are not cached.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.config import RegistryCheckConfig
from exporter.core.snapshot import DigestRef

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
DOCKER_HUB = "docker.io"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Located:
    """Where a repo digest points: the registry host (as config.json keys it), the repository path there."""

    registry: str
    repository: str
    digest: str


def locate(pinned: str) -> Located | None:
    """`127.0.0.1:5000/app@sha256:…` -> (127.0.0.1:5000, app); `nginx@…` -> (docker.io, library/nginx)."""
    ref = DigestRef.parse(pinned)
    if ref is None:
        return None
    first, _, rest = ref.repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return Located(first, rest, ref.digest)
    path = ref.repository if "/" in ref.repository else f"library/{ref.repository}"
    return Located(DOCKER_HUB, path.removeprefix("docker.io/"), ref.digest)


def read_credentials(path: str | None) -> dict[str, tuple[str, str]]:
    """registry host -> (user, password) from a docker config.json (`auths`); {} without one."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    found: dict[str, tuple[str, str]] = {}
    auths = data.get("auths") if isinstance(data, dict) else None
    for key, entry in (auths or {}).items():
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            user, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        if isinstance(user, str) and isinstance(password, str) and user:
            host = DOCKER_HUB if key in _HUB_KEYS else urllib.parse.urlsplit(key).netloc or key.rstrip("/")
            found[host] = (user, password)
    return found


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # credentials never follow a redirect to wherever it points


class RegistryCheck:
    """Asks registries whether they hold an image's manifest; answers cached for `cache_for`."""

    def __init__(
        self,
        config: RegistryCheckConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        opener: urllib.request.OpenerDirector | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.credentials = read_credentials(config.docker_config)
        self._opener = opener or urllib.request.build_opener(_NoRedirect())
        self._cache: dict[Located, tuple[bool, float]] = {}
        #: Every (host, whether credentials were sent) of the requests made: what the tests read.
        self.sent: list[tuple[str, bool]] = []

    async def has_copy(self, repo_digests: Iterable[str]) -> bool:
        """True when a registry the image names confirms one of its repo digests; False otherwise (no
        digest, not found, or unknown)."""
        for pinned in repo_digests:
            located = locate(pinned)
            if located is not None and await self.confirm(located):
                return True
        return False

    async def confirm(self, located: Located) -> bool | None:
        cached = self._cache.get(located)
        if cached is not None and self.clock() - cached[1] < self.config.cache_for:
            return cached[0]
        answer = await asyncio.to_thread(self._ask, located)
        if answer is not None:
            self._cache[located] = (answer, self.clock())
        return answer

    # -- one question, in a worker thread -----------------------------------------------------------------
    def _base(self, host: str) -> str:
        name = host.rsplit(":", 1)[0].strip("[]")
        loopback = name in ("localhost", "::1") or name.startswith("127.")
        api = "registry-1.docker.io" if host == DOCKER_HUB else host
        return f"{'http' if loopback else 'https'}://{api}"

    def _ask(self, located: Located) -> bool | None:
        url = f"{self._base(located.registry)}/v2/{located.repository}/manifests/{located.digest}"
        status, challenge = self._head(url, located.registry, None)
        if status == 401 and challenge:
            scheme, _, params = challenge.partition(" ")
            creds = self.credentials.get(located.registry)
            if scheme.lower() == "basic" and creds is not None:
                status, _ = self._head(url, located.registry, "Basic " + _basic(creds))
            elif scheme.lower() == "bearer":
                token = self._token(dict(_CHALLENGE.findall(params)), located)
                if token is not None:
                    status, _ = self._head(url, located.registry, "Bearer " + token)
        if status == 200:
            return True
        if status == 404:
            return False
        return None

    def _head(self, url: str, host: str, authorization: str | None) -> tuple[int, str]:
        request = urllib.request.Request(url, method="HEAD", headers={"Accept": MANIFEST_TYPES})
        if authorization is not None:
            request.add_header("Authorization", authorization)
        self.sent.append((host, authorization is not None))
        try:
            with self._opener.open(request, timeout=self.config.timeout) as answer:
                return int(answer.status), ""
        except urllib.error.HTTPError as exc:
            return exc.code, str(exc.headers.get("WWW-Authenticate") or "")
        except (OSError, ValueError):
            return 0, ""

    def _token(self, challenge: Mapping[str, str], located: Located) -> str | None:
        """A bearer token from the challenge's realm; with credentials only when the realm is the registry's
        own host (a token server elsewhere is asked anonymously)."""
        realm = challenge.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        query = {k: v for k, v in (("service", challenge.get("service")),) if v}
        query["scope"] = f"repository:{located.repository}:pull"
        request = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}")
        creds = self.credentials.get(located.registry)
        own_host = parts.netloc == ("registry-1.docker.io" if located.registry == DOCKER_HUB else located.registry)
        if creds is not None and own_host:
            request.add_header("Authorization", "Basic " + _basic(creds))
        self.sent.append((parts.netloc, creds is not None and own_host))
        try:
            with self._opener.open(request, timeout=self.config.timeout) as answer:
                data = json.loads(answer.read(1 << 20))
        except (OSError, ValueError):
            return None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        return token if isinstance(token, str) and token else None


def _basic(creds: tuple[str, str]) -> str:
    return base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode("ascii")
