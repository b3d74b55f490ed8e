"""What a test needs from the machine, and the rule for when it is missing: skip locally, fail under CI=true.

A green CI that skipped every engine test proves nothing, so under CI a missing engine or program is a
failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from tests.harness.dockerd import find_program

#: What `@pytest.mark.e2e` needs when it names nothing else.
E2E_PROGRAMS = ("prometheus", "promtool", "prometheus-alertmanager", "amtool")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with `reason`, or fail under CI=true (a skip under CI is a failure)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)


def engine_unavailable_reason() -> str | None:
    """Why a private dockerd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    for program, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("containerd", "containerd")):
        if find_program(program) is None:
            return f"{program} not installed (apt-get install {package})"
    return None


def require_engine() -> None:
    reason = engine_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


def require_programs(*programs: str) -> None:
    missing = [p for p in programs if find_program(p) is None]
    if missing:
        skip_or_fail(f"missing programs: {', '.join(missing)} (make test-deps installs them)")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root")


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool (skip or fail when it is missing); the caller reads returncode and output."""
    require_programs("promtool")
    path = find_program("promtool")
    assert path is not None
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)
