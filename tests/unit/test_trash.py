"""The trash (exporter/remediation/trash.py): its bound, its expiry, and no DELETE without a whole save.

The engine's save is the in-memory engine streaming bytes, because what is tested here is what the trash
does with any stream (longer than announced, failing half-way); the real `GET /images/{id}/get` and
`POST /images/load` are in tests/integration/test_trash_engine.py.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import TrashConfig
from exporter.engine.client import EngineError
from exporter.remediation import trash as trash_module
from exporter.remediation.trash import PARTIAL_PREFIX, Trash, TrashRefused
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_executor import OLD, Harness, act

GIB = 1 << 30


class SavingEngine(FakeEngine):
    """The fake engine with `save_image`: `archives[id]` bytes in chunks; `fail_at` bytes, then an error."""

    def __init__(self) -> None:
        super().__init__()
        self.archives: dict[str, int] = {}
        self.fail_at: int | None = None

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        self._hook("save_image", image_id)
        left, sent = self.archives.get(image_id, 1000), 0
        while left > 0:
            chunk = min(left, 4096)
            if self.fail_at is not None and sent + chunk > self.fail_at:
                raise EngineError("write /var/lib/docker/tmp: connection reset")
            sink(b"x" * chunk)
            sent += chunk
            left -= chunk


def big_fs(path: str) -> os.statvfs_result:
    return os.statvfs_result((4096, 4096, GIB // 4096, GIB // 4096, GIB // 4096, 0, 0, 0, 0, 255))


def trash_of(tmp_path: Path, engine: SavingEngine, max_bytes: int, clock: Callable[[], float] = lambda: 1e9) -> Trash:
    return Trash(TrashConfig(path=str(tmp_path / "trash"), max_bytes=max_bytes), engine, clock=clock, statvfs=big_fs)


def files(trash: Trash) -> list[str]:
    return sorted(os.listdir(trash.folder)) if trash.folder.exists() else []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_mib=st.integers(1, 4),
    saves=st.lists(st.tuples(st.integers(0, 5 << 20), st.integers(1, 5 << 20)), min_size=1, max_size=8),
)
def test_the_trash_never_holds_more_than_max_bytes(
    tmp_path_factory: Any, max_mib: int, saves: list[tuple[int, int]]
) -> None:
    """Whatever the images announce (`Size`) and whatever their archives really take: never past max_bytes."""
    tmp_path = tmp_path_factory.mktemp("trash")
    engine = SavingEngine()
    clock = iter(range(1_000_000_000, 2_000_000_000))
    trash = trash_of(tmp_path, engine, max_mib << 20, clock=lambda: float(next(clock)))

    async def save_all() -> None:
        for n, (announced, actual) in enumerate(saves):
            iid = f"sha256:{n:064x}"
            engine.archives[iid] = actual
            try:
                archive = await trash.save(iid, {"Size": announced})
            except TrashRefused:
                assert iid.removeprefix("sha256:") not in " ".join(files(trash))
            else:
                assert archive.size == actual and archive.path.exists()
            assert sum(a.size for a in trash.archives()) <= trash.config.max_bytes
            assert not [f for f in files(trash) if f.startswith(PARTIAL_PREFIX)]

    asyncio.run(save_all())


async def test_expiry_removes_old_archives_then_the_oldest_to_make_room(tmp_path: Path) -> None:
    engine = SavingEngine()
    now = [1e9]
    trash = Trash(
        TrashConfig.model_validate({"path": str(tmp_path / "trash"), "max_bytes": 3 << 20, "keep_for": "1h"}),
        engine,
        clock=lambda: now[0],
        statvfs=big_fs,
    )
    ids = [f"sha256:{n:064x}" for n in range(4)]
    for n, iid in enumerate(ids[:3]):
        engine.archives[iid] = 1 << 20
        now[0] = 1e9 + n
        await trash.save(iid, {"Size": 1 << 20})
    assert [a.image_id for a in trash.archives()] == ids[:3]
    engine.archives[ids[3]] = 1 << 20
    now[0] = 1e9 + 10
    await trash.save(ids[3], {"Size": 1 << 20})  # full: the oldest goes
    assert [a.image_id for a in trash.archives()] == ids[1:]
    now[0] = 1e9 + 1 + 3600.5  # ids[1] is older than keep_for now, ids[2] not yet
    assert [a.image_id for a in trash.expire()] == ids[2:]
    now[0] = 1e9 + 2 + 3600.5  # a run's plan expires them too, without saving anything
    engine.add("local", ("app:1",), arrived=OLD)
    trash.annotate(Harness(tmp_path, engine).plan(act("prune_unused")))
    assert [a.image_id for a in trash.archives()] == ids[3:]


async def test_an_image_larger_than_max_bytes_is_refused_without_touching_the_trash(tmp_path: Path) -> None:
    engine = SavingEngine()
    trash = trash_of(tmp_path, engine, 1 << 20)
    try:
        await trash.save("sha256:" + "a" * 64, {"Size": 2 << 20})
    except TrashRefused as exc:
        assert "larger than remediation.trash.max_bytes" in str(exc)
    else:
        raise AssertionError("saved")
    assert files(trash) == [] and engine.calls == []


async def test_a_low_trash_filesystem_refuses_before_the_engine_is_asked(tmp_path: Path) -> None:
    engine = SavingEngine()

    def nearly_full(path: str) -> os.statvfs_result:  # 100 MiB, 6 MiB available: 5 MiB stay free
        return os.statvfs_result((4096, 4096, 25600, 1536, 1536, 0, 0, 0, 0, 255))

    trash = Trash(TrashConfig(path=str(tmp_path / "trash"), max_bytes=GIB), engine, statvfs=nearly_full)
    try:
        await trash.save("sha256:" + "b" * 64, {"Size": 2 << 20})
    except TrashRefused as exc:
        assert "low" in str(exc)
    else:
        raise AssertionError("saved")
    assert engine.calls == []


# -- through the executor: no save, no DELETE -------------------------------------------------------------
async def test_a_save_that_fails_half_way_means_no_delete_and_no_intent(tmp_path: Path) -> None:
    engine = SavingEngine()
    local = engine.add("local", ("app:1",), arrived=OLD)
    pulled = engine.add("pulled", ("lib:1",), arrived=OLD, digests=("lib@sha256:" + "c" * 64,))
    engine.archives[local] = 50_000
    engine.fail_at = 20_000
    h = Harness(tmp_path, engine)
    h.executor.trash = Trash(
        TrashConfig(path=str(tmp_path / "trash"), max_bytes=GIB),
        engine,
        digests_prove_copy=lambda: True,
        statvfs=big_fs,
    )
    run = await h.run(act("prune_unused"))
    outcomes = {o.image_id: o for o in run.outcomes}
    assert (outcomes[local].result, outcomes[local].skip_reason) == ("skipped", "trash")
    assert "connection reset" in outcomes[local].detail
    assert outcomes[pulled].result == "deleted", outcomes[pulled].detail  # a repo digest proves a copy: no save
    assert local in engine.images and [r.image_id for r in engine.removals] == [pulled]
    assert not [r for r in h.audit() if r["event"] in ("intent", "trash") and r["image_id"] == local]
    assert files(h.executor.trash) == []


class FillingFile(io.RawIOBase):
    """A file on a filesystem that fills after `room` bytes: later writes fail with ENOSPC."""

    def __init__(self, path: Path, room: int) -> None:
        self.path, self.room = path, room
        path.write_bytes(b"")  # it exists, as the real one would: the trash must remove it

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "no descriptor")


async def test_a_filesystem_that_fills_mid_save_means_no_delete_even_with_bytes_left_in_the_buffer(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Chunks smaller than the file buffer: the write that fails leaves bytes buffered, and closing the file
    tries them again (and fails again). That too is a save cut short, not an error that ends the run."""
    engine = SavingEngine()
    local = engine.add("local", ("app:1",), arrived=OLD)
    engine.archives[local] = 50_000
    monkeypatch.setattr(
        trash_module, "open", lambda path, mode: io.BufferedWriter(FillingFile(Path(path), 10_000)), raising=False
    )
    h = Harness(tmp_path, engine)
    h.executor.trash = Trash(TrashConfig(path=str(tmp_path / "trash"), max_bytes=GIB), engine, statvfs=big_fs)
    run = await h.run(act("prune_unused"))
    assert run.result != "failure", run.detail
    (outcome,) = run.outcomes
    assert (outcome.result, outcome.skip_reason) == ("skipped", "trash"), outcome
    assert "No space left on device" in outcome.detail
    assert local in engine.images and engine.removals == []
    assert not [r for r in h.audit() if r["event"] in ("intent", "trash")]
    assert files(h.executor.trash) == []


async def test_where_digests_prove_nothing_every_image_is_saved_first(tmp_path: Path) -> None:
    engine = SavingEngine()
    pulled = engine.add("pulled", ("lib:1",), arrived=OLD, digests=("lib@sha256:" + "c" * 64,))
    h = Harness(tmp_path, engine)
    h.executor.trash = Trash(
        TrashConfig(path=str(tmp_path / "trash"), max_bytes=GIB),
        engine,
        digests_prove_copy=lambda: False,  # the containerd store, Podman
        statvfs=big_fs,
    )
    seen: list[str] = []
    engine.before = lambda call, arg: seen.append(call) if call in ("save_image", "remove_image") else None
    run = await h.run(act("prune_unused"))
    assert run.images_deleted == 1 and seen == ["save_image", "remove_image"]
    records = h.audit()
    (saved,) = [r for r in records if r["event"] == "trash"]
    (intent,) = [r for r in records if r["event"] == "intent"]
    assert saved["image_id"] == pulled and records.index(saved) < records.index(intent)
    assert size_of(saved["file"]) == saved["bytes"] == 1000


def size_of(path: str) -> int:
    return os.stat(path).st_size


def test_the_plan_says_which_candidates_the_trash_saves_and_which_it_cannot(tmp_path: Path) -> None:
    engine = SavingEngine()
    engine.add("local", ("app:1",), arrived=OLD)
    engine.add("pulled", ("lib:1",), arrived=OLD, digests=("lib@sha256:" + "c" * 64,))
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))

    def low(path: str) -> os.statvfs_result:  # 100 MiB, 1 MiB available
        return os.statvfs_result((4096, 4096, 25600, 256, 256, 0, 0, 0, 0, 255))

    roomy = Trash(TrashConfig(path=str(tmp_path / "t"), max_bytes=GIB), engine, statvfs=big_fs).annotate(plan)
    assert [n for n in roomy.notes if n.startswith("trash:")] == [
        f"trash: 1 candidates have no known registry copy: each is saved to {tmp_path / 't'} before its DELETE "
        f"(about 100 bytes; max_bytes {GIB})"
    ]
    full = Trash(TrashConfig(path=str(tmp_path / "t"), max_bytes=GIB), engine, statvfs=low).annotate(plan)
    assert any("filesystem is low" in n for n in full.notes)
    nothing = Trash(
        TrashConfig(path=str(tmp_path / "t"), max_bytes=GIB), engine, digests_prove_copy=lambda: False
    ).annotate(plan)
    assert any("2 candidates have no known registry copy" in n for n in nothing.notes)
