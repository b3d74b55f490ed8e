"""GroupCommit: concurrent writers share fsyncs, and each learns whether its own line reached the disk."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.remediation import audit as audit_module
from exporter.remediation.audit import AuditError, AuditLog, GroupCommit
from exporter.remediation.audittail import read_audit_tail
from tests.harness.audit import read_audit
from tests.harness.dockerd import find_program
from tests.harness.requires import require_programs, require_root
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_executor import OLD, DiskFull, Harness, act


async def test_lines_written_together_share_one_fsync_and_keep_their_order(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    writer = GroupCommit(log)
    await asyncio.gather(*(writer.write({"event": "intent", "n": n}) for n in range(10)))
    await writer.write_many([{"event": "image", "n": 10}, {"event": "image", "n": 11}])
    assert [r["n"] for r in read_audit(log.path)] == list(range(12))
    assert writer.flushes < 11  # the ten concurrent lines did not take ten fsyncs


async def test_every_writer_of_a_failed_flush_gets_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    writer = GroupCommit(log)
    DiskFull(monkeypatch, fail_from=1)
    results = await asyncio.gather(*(writer.write({"n": n}) for n in range(4)), return_exceptions=True)
    assert all(isinstance(r, AuditError) for r in results)
    assert writer.flushes == 0


# -- log rotation -------------------------------------------------------------------------------------------


def lines_of(path: Path) -> list[bytes]:
    """The raw lines of a file, each with its newline (a cut last line has none)."""
    return path.read_bytes().splitlines(keepends=True)


def test_a_rename_between_two_writes_sends_the_next_line_to_the_file_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.write({"n": 1})
    path.rename(tmp_path / "audit.jsonl.1")  # logrotate's `create` mode: rename, then maybe create
    log.write({"n": 2})
    (tmp_path / "audit.jsonl.1").rename(tmp_path / "audit.jsonl.2")
    path.rename(tmp_path / "audit.jsonl.1")
    path.touch(mode=0o640)  # created by the rotation before the next write
    log.write({"n": 3})
    assert [read_audit(tmp_path / name) for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")] == [
        [{"n": 1}],
        [{"n": 2}],
        [{"n": 3}],
    ]


def test_copytruncate_needs_nothing_lines_land_at_the_start_of_the_emptied_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.write_many([{"n": 1}, {"n": 2}])
    shutil.copyfile(path, tmp_path / "audit.jsonl.1")
    os.truncate(path, 0)
    log.write({"n": 3})
    assert lines_of(path) == [b'{"n":3}\n']  # O_APPEND: no hole of NUL bytes where the old lines were
    assert read_audit(tmp_path / "audit.jsonl.1") == [{"n": 1}, {"n": 2}]


class _CountingOpens:
    """The `os` module as audit.py sees it, recording every `os.open`."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        self.opened.append(str(path))
        return os.open(path, flags, mode)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_reopen_lets_go_of_a_renamed_file_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP is not needed after a rotation (each write checks the path) but is honoured, as operators expect."""
    counting = _CountingOpens()
    monkeypatch.setattr(audit_module, "os", counting)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.write({"n": 1})
    log.write({"n": 2})
    assert counting.opened == [str(path)]
    path.rename(tmp_path / "audit.jsonl.1")
    log.reopen()
    assert counting.opened == [str(path)] * 2 and path.exists()  # opened (created) now, not at the next write
    log.write({"n": 3})
    assert len(counting.opened) == 2
    assert read_audit(tmp_path / "audit.jsonl.1") == [{"n": 1}, {"n": 2}]
    assert read_audit(path) == [{"n": 3}]


# -- a full disk ----------------------------------------------------------------------------------------------


PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs gives space to a file a page at a time


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards: a disk that really fills up."""
    require_root("mounting a small tmpfs")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)  # lazily: a test may hold a file open


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; delete it to free the space."""
    filler = directory / "filler"
    if filler.exists():
        return filler
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_a_line_cut_by_a_full_disk_stays_alone_and_the_next_record_starts_on_its_own_line(small_fs: Path) -> None:
    path = small_fs / "audit.jsonl"
    log = AuditLog(str(path))
    log.write({"event": "run_start", "n": 1})
    filler = fill(small_fs)
    with pytest.raises(AuditError, match="No space left on device"):
        log.write({"event": "intent", "n": 2, "detail": "x" * 8192})  # bigger than the rest of its page
    cut = path.read_bytes()
    assert not cut.endswith(b"\n") and len(cut) > 100, "the disk should have taken part of the line"

    filler.unlink()
    log.write({"event": "image", "n": 3})
    raw = lines_of(path)
    assert len(raw) == 3 and all(line.endswith(b"\n") for line in raw)
    assert json.loads(raw[0]) == {"event": "run_start", "n": 1}
    assert raw[1].startswith(b'{"detail":"xxx') and raw[1].rstrip(b"\n") == cut.split(b"\n", 1)[1]
    assert json.loads(raw[2]) == {"event": "image", "n": 3}

    tail = read_audit_tail(path, lines=10)
    assert tail.records[0] == {"event": "image", "n": 3}
    assert tail.records[1] == {"unreadable": raw[1].decode().rstrip("\n")}
    assert tail.records[2] == {"event": "run_start", "n": 1}
    assert tail.problem == f"1 unreadable line(s) in audit log {path}"
    log.close()


def test_a_cut_line_left_by_an_earlier_process_is_closed_before_the_first_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2,"det')  # power lost mid-write
    log = AuditLog(str(path))
    log.write({"n": 3})
    assert lines_of(path) == [b'{"n":1}\n', b'{"n":2,"det\n', b'{"n":3}\n']
    log.write({"n": 4})
    assert lines_of(path)[-1] == b'{"n":4}\n'  # once the file ends with a newline, no blank lines


async def test_a_full_disk_at_the_intent_sends_no_delete(small_fs: Path) -> None:
    engine = FakeEngine()
    for n in range(3):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD)
    h = Harness(small_fs, engine)

    def disk_fills_up(_call: str, _arg: str) -> None:
        if (small_fs / "filler").exists():
            return
        # The run has started (its first line is on disk); pad the audit file to the end of its page, so
        # the intent needs a new page, and take every other page.
        used = h.audit_path.stat().st_size % PAGE
        with h.audit_path.open("ab") as handle:
            handle.write(b'{"pad":"' + b"x" * (PAGE - used - 11) + b'"}\n')
        fill(small_fs)

    engine.before = disk_fills_up
    try:
        run = await h.run(act("prune_unused"))
    finally:
        h.executor.audit.close()
    assert engine.removals == [] and run.result == "failure"
    assert "No space left on device" in run.detail
    assert [r.get("event") for r in read_audit(h.audit_path)] == ["run_start", None]  # and the padding


# -- a real logrotate in the middle of a run -------------------------------------------------------------------


def logrotate(log_path: Path, workdir: Path, mode: str) -> None:
    """Rotate `log_path` now with Debian's logrotate, in `create` or `copytruncate` mode."""
    require_programs("logrotate")
    program = find_program("logrotate")
    assert program is not None
    conf = workdir / "logrotate.conf"
    conf.write_text(f"{log_path} {{\n  rotate 3\n  {mode}\n  nocompress\n  missingok\n}}\n")
    conf.chmod(0o644)  # logrotate ignores a config others can write
    done = subprocess.run(
        [program, "--force", "--state", str(workdir / "logrotate.state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", ["create 0640", "copytruncate"])
async def test_logrotate_between_deletions_keeps_every_line_of_the_run(tmp_path: Path, mode: str) -> None:
    engine = FakeEngine()
    for n in range(10):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine)
    rotated_before: list[str] = []

    def rotate_at_the_fourth_delete(call: str, ref: str) -> None:
        if call == "remove_image" and len(engine.removals) == 3 and not rotated_before:
            rotated_before.append(ref)  # this DELETE's intent is written, its outcome is not
            logrotate(h.audit_path, tmp_path, mode)

    engine.before = rotate_at_the_fourth_delete
    run = await h.run(act("prune_unused"))
    assert run.result == "success" and run.images_deleted == 10 and rotated_before

    old, new = read_audit(tmp_path / "audit.jsonl.1"), read_audit(h.audit_path)
    lines = old + new
    assert [r["event"] for r in lines].count("intent") == 10
    assert lines[0]["event"] == "run_start" and lines[-1]["event"] == "run_end"
    for image_id in {r.image_id for r in engine.removals}:
        events = [(i, r["event"]) for i, r in enumerate(lines) if r.get("image_id") == image_id]
        assert [e for _, e in events] == ["intent", "image"], events  # each once, the intent first
    moved = [r for r in lines if r.get("image_id") == rotated_before[0]]
    assert moved[0] in old and moved[1] in new  # intent before the rotation, outcome after it
    outcomes_in_new = {r["image_id"] for r in new if r["event"] == "image"}
    assert {r.image_id for r in engine.removals[3:]} <= outcomes_in_new  # every DELETE after the rotation
    assert new[-1]["event"] == "run_end"
    assert all(r["run_id"] == run.run_id for r in lines)
