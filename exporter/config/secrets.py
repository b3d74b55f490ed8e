"""Secrets kept in files (`bearer_token_file`, `password_file`): read them, refuse an empty one.

An empty secret is the dangerous case: compared against an empty `Authorization` credential it would let
anybody in. The files are read at start-up and at every reload (exporter/web/reload.py), both through
`load_config`: a rotation to an empty or unreadable file is refused as a whole and the credential in effect
stays, never an empty one.
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
