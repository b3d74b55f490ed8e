"""Reading the remediation audit log in tests: one JSON object per line (the exporter only writes it)."""

from __future__ import annotations

import json
import os
from typing import Any


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in an audit log, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
