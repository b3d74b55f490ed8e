"""What to do about an engine error: one hint per well-known failure, for the log and the landing page.

Pure text in, text out: the poller logs `engine_error_hint(str(exc))` next to the error, the landing page
shows it under "Last error". The messages come from requests/urllib3/the docker SDK, so matching is by
substrings that have been stable across their versions.
"""

from __future__ import annotations

import re

_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"permission denied|EACCES", re.I),
        "the exporter's user may not open the engine's socket: add the user to the docker group, or run with "
        'the socket\'s group (docker run --group-add "$(stat -c %g /var/run/docker.sock)"; Kubernetes: '
        "securityContext.supplementalGroups)",
    ),
    (
        re.compile(r"no such file or directory|FileNotFoundError|ENOENT", re.I),
        "there is no socket at that path: is the engine running? check --docker.host "
        "(else docker.host in the config, else DOCKER_HOST)",
    ),
    (
        re.compile(r"connection refused|ECONNREFUSED", re.I),
        "nothing accepts connections at that address: is the engine running? check --docker.host",
    ),
    (
        re.compile(r"not supported url scheme http\+docker", re.I),
        "the installed docker SDK is older than 7.1 and breaks with requests >= 2.32: pip install 'docker>=7.1'",
    ),
    (
        re.compile(r"certificate verify failed|SSLError|wrong version number", re.I),
        "TLS to the engine failed: check DOCKER_TLS_VERIFY and the certificates in DOCKER_CERT_PATH, "
        "and that --docker.host uses the engine's TLS port",
    ),
    (
        re.compile(r"timed out|did not answer within|ReadTimeout", re.I),
        "the engine is too slow to answer: check its load, or raise docker.timeout in the config",
    ),
)


def engine_error_hint(error_text: str) -> str | None:
    """The advice for an engine error's text, or None when there is nothing better to say than the error."""
    for pattern, hint in _HINTS:
        if pattern.search(error_text):
            return hint
    return None
