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


#: The poller's statvfs errors start with this; the engine may be fine while they happen.
FILESYSTEM_ERROR = "filesystem: "
_DETECTED_ROOT = "the engine's data root (filesystem.path unset)"


def filesystem_error(path: str, configured: bool, exc: OSError) -> str:
    """The text of a statvfs failure, saying where the path came from (the hint depends on it)."""
    return f"{FILESYSTEM_ERROR}cannot statvfs {path}, {'filesystem.path' if configured else _DETECTED_ROOT}: {exc}"


def engine_error_hint(error_text: str) -> str | None:
    """The advice for an engine error's text, or None when there is nothing better to say than the error."""
    if error_text.startswith(FILESYSTEM_ERROR):
        if _DETECTED_ROOT in error_text:
            return (
                "the engine reports this data root, but this process cannot see it: in a container, mount the "
                "host's data root read-only at the same path, or set filesystem.path to where it is mounted"
            )
        return (
            "filesystem.path must be a path on the engine's data-root filesystem that this process can see "
            "(docker info: Docker Root Dir); in a container, mount the data root read-only there"
        )
    for pattern, hint in _HINTS:
        if pattern.search(error_text):
            return hint
    return None
