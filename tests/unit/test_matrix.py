"""The engine matrix's legs run in threads of one process: no leg may change the environment they share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness import containerd, matrix


def test_the_cri_probe_passes_its_suite_and_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another leg starting its pytest meanwhile copies `os.environ`: a suite set there would leak into it."""
    monkeypatch.delenv("DIE_CRI_ENGINE", raising=False)
    before = dict(os.environ)
    asked: list[tuple[str | None, dict[str, str]]] = []

    def bin_dir(suite: str | None = None) -> Path | None:
        asked.append((suite, dict(os.environ)))
        return None

    monkeypatch.setattr(containerd, "containerd_bin_dir", bin_dir)
    monkeypatch.setattr(containerd, "containerd_version", lambda _: "1.7.24~ds1")
    for leg, suite in matrix.CRI_LEGS.items():
        row = matrix.Row(leg)
        matrix._probe_containerd(row)
        assert asked[-1] == (suite, before)
        assert row.store == "containerd 1.7.24~ds1 native"
    assert dict(os.environ) == before


@pytest.mark.parametrize(("suite", "environ"), [("bookworm", "trixie"), (None, "bookworm")])
def test_the_suite_argument_wins_over_the_environment(
    suite: str | None, environ: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leg's own test process reads `DIE_CRI_ENGINE`; an explicit suite is never overridden by it."""
    monkeypatch.setenv("DIE_CRI_ENGINE", environ)
    assert containerd.containerd_bin_dir(suite) is None  # bookworm: the system's containerd, on PATH
    with pytest.raises(containerd.ContainerdError, match="DIE_CRI_ENGINE=sid"):
        containerd.containerd_bin_dir("sid")
