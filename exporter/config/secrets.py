"""Secrets kept in files (`bearer_token_file`, `password_file`): read them, refuse an empty one.

An empty secret is the dangerous case: compared against an empty `Authorization` credential it would let
anybody in. Today the files are read once, at start-up (a change needs a restart, like the rest of the
config); an HTTP layer that re-reads them later must use this same function and refuse requests (401/503)
when it raises, never fall back to an empty or stale credential.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretFileError(ValueError):
    """The secret file cannot be read or holds nothing but whitespace; the message names the file."""


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """The secret in `path` without surrounding whitespace (a trailing newline is common)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretFileError(f"cannot read {path}: {reason}") from None
    secret = text.strip()
    if not secret:
        raise SecretFileError(f"{path} is empty: an empty secret would let anybody in")
    return secret
