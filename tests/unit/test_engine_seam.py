"""The engine seam: both backends have every member the layers above use, with the same call shape, and the
seam lists nothing those layers do not use.

mypy checks the same where `engine/backend.py` returns each backend as an `EngineSeam` (and below, in
`_typed`); these tests hold without mypy too, and keep the list exact.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from exporter.engine.client import Engine
from exporter.engine.cri.client import CriEngine
from exporter.engine.seam import EngineSeam, TransferSeam

ROOT = Path(__file__).resolve().parents[2]
#: Where the seam is used: the layers above engine/, the composition root, and the first reads.
USERS = [
    *sorted((ROOT / "exporter" / "state").rglob("*.py")),
    *sorted((ROOT / "exporter" / "remediation").rglob("*.py")),
    *sorted((ROOT / "exporter" / "web").rglob("*.py")),
    ROOT / "exporter" / "app.py",
    ROOT / "exporter" / "cli.py",
    ROOT / "exporter" / "engine" / "firstreads.py",
]


def _typed(docker: Engine, cri: CriEngine) -> tuple[EngineSeam, EngineSeam]:
    return docker, cri  # a backend that drifts from the seam is a mypy error here


def seam_members(protocol: type) -> list[str]:
    return sorted(
        name
        for klass in protocol.__mro__
        if klass is not object
        for name in {*vars(klass), *getattr(klass, "__annotations__", {})}
        if not name.startswith("_")
    )


def call_shape(member: object) -> list[tuple[str, object, object]]:
    parameters = list(inspect.signature(member).parameters.values())  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in parameters]


@pytest.mark.parametrize("backend", [Engine, CriEngine])
def test_both_backends_have_every_seam_member_with_its_signature(backend: type) -> None:
    """Every member present (a method, property, class or instance value); methods of the same kind (coroutine
    or not) and called the same way (names, kinds and defaults of their parameters)."""
    for name in seam_members(EngineSeam):
        assert hasattr(backend, name) or name in _instance_attributes(backend), f"{backend.__name__} lacks {name}"
        want = inspect.getattr_static(EngineSeam, name, None)
        have = inspect.getattr_static(backend, name, None)
        if inspect.isfunction(want):
            assert inspect.isfunction(have), f"{backend.__name__}.{name} is not a method"
            assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), name
            assert call_shape(have) == call_shape(want), f"{backend.__name__}.{name}"


def _instance_attributes(backend: type) -> set[str]:
    """What `__init__` assigns on `self` (values, not methods), read from its source."""
    return set(re.findall(r"self\.(\w+)(?::[^=]+)? = ", inspect.getsource(backend.__init__)))  # type: ignore[misc]


@pytest.mark.parametrize("backend", [Engine, CriEngine])
def test_each_backend_hands_its_transfer_lane_on(backend: type) -> None:
    """The restore and trash calls of each backend are its `transfer`'s (one lane, one module)."""
    source = inspect.getsource(backend)
    for name in seam_members(TransferSeam):
        assert re.search(rf"await self\.transfer\.{name}\(", source), f"{backend.__name__}.{name}"


def test_the_seam_lists_only_what_the_layers_above_use() -> None:
    text = "\n".join(path.read_text() for path in USERS)
    unused = [name for name in seam_members(EngineSeam) if not re.search(rf"\.{name}\b", text)]
    assert not unused, f"in the seam, used by none of its users: {unused}"
