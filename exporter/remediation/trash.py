"""The trash: an image with no known registry copy is saved (`GET /images/{id}/get`) before it is deleted.

A restore loads it back from here (`POST /images/load`) when no registry copy exists.

The rules, in the order `before_delete` applies them (each refusal is a skip of that image, reason `trash`:
no save, no DELETE, the same rule as the audit intent):
- an image whose repo digest proves a registry copy (the classic store: a digest only after a pull or a
  push) needs no save; on the containerd store and Podman every image lists one, so there every image is
  saved. With `remediation.registry_check`, a copy counts only when a registry confirms it, on every engine;
- a free_space run never saves onto the filesystem it is freeing (also refused at config load);
- archives older than `keep_for` go; then the oldest go until the new one fits `max_bytes` (its size estimated
  from the image's); an image larger than `max_bytes` alone is not saved;
- the trash's own filesystem keeps LOW_AVAIL_RATIO of its size available after the save, else no save;
- the archive is written to a temporary name, fsync'd, renamed and the folder fsync'd: a name without the
  `.partial-` prefix is a whole archive. The writer stops (and the save fails) the moment the archives would
  pass `max_bytes` or the filesystem is full, so the bound holds even when the estimate was short;
- `stop()` (shutdown) cuts a save in progress short: that image is not deleted.
Saves run one at a time: the bound is checked against every archive already written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from exporter.config import TrashConfig
from exporter.engine.errors import EngineError
from exporter.engine.seam import EngineSeam
from exporter.remediation.planner import Plan
from exporter.remediation.registrycheck import RegistryCheck
from exporter.remediation.runs import Run

#: Share of the trash filesystem that stays available after a save; a save that would go below is not started.
LOW_AVAIL_RATIO = 0.05
PARTIAL_PREFIX = ".partial-"
_ARCHIVE = re.compile(r"^(\d+)-([0-9a-f]{64})\.tar$")


class TrashRefused(Exception):
    """The image was not saved (why is the message): it must not be deleted."""


class _CutShort(Exception):
    """Raised by the writer inside the engine's read loop: stop reading, the save failed."""


class TrashGauges(Protocol):
    def set_trash(self, images: int, size: int, max_bytes: int) -> None: ...


Audit = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Archive:
    """One saved image: `<saved at, ms>-<image id hex>.tar` in the trash folder."""

    path: Path
    image_id: str
    saved_at: float
    size: int


def archive_name(image_id: str, saved_at: float) -> str:
    return f"{int(saved_at * 1000)}-{image_id.removeprefix('sha256:')}.tar"


def platform_of(inspect: Mapping[str, Any]) -> dict[str, str] | None:
    """The image's own OCI platform (`os`, `architecture`, `variant`), from its inspect; None when unknown."""
    os_name, arch = inspect.get("Os"), inspect.get("Architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    platform = {"os": os_name, "architecture": arch}
    variant = inspect.get("Variant")
    if isinstance(variant, str) and variant:
        platform["variant"] = variant
    return platform


class Trash:
    """The trash folder: saves before deletions, expiry, and its totals for `docker_remediation_trash_*`."""

    def __init__(
        self,
        config: TrashConfig,
        engine: EngineSeam,
        *,
        digests_prove_copy: Callable[[], bool] = lambda: True,
        gauges: TrashGauges | None = None,
        registry_check: RegistryCheck | None = None,
        clock: Callable[[], float] = time.time,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.config = config
        self.engine = engine
        self.digests_prove_copy = digests_prove_copy
        self.gauges = gauges
        #: When set, a copy is known only when a registry confirms it (a manifest HEAD), on every engine.
        self.registry_check = registry_check
        self.clock = clock
        self.statvfs = statvfs
        self._lock = asyncio.Lock()
        self._stop = threading.Event()
        self.publish()  # the series exist from startup: a dashboard shows the bound before the first save

    @property
    def folder(self) -> Path:
        return Path(self.config.path)

    def reconfigure(self, config: TrashConfig) -> None:
        """A reload: the new bounds apply from the next save (and the expiry it starts with)."""
        self.config = config
        self.publish()  # the gauge of max_bytes follows the reload at once

    def stop(self) -> None:
        """Shutdown: a save in progress fails (its image stays), and no new one starts."""
        self._stop.set()

    # -- what is in it ------------------------------------------------------------------------------------
    def archives(self) -> list[Archive]:
        """Whole archives, oldest first (temporary files of saves in progress or cut short are not counted)."""
        found: list[Archive] = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        for entry in entries:
            match = _ARCHIVE.match(entry.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                size = entry.stat().st_size
                found.append(Archive(Path(entry.path), "sha256:" + match[2], int(match[1]) / 1000, size))
        found.sort(key=lambda a: (a.saved_at, a.path.name))
        return found

    def publish(self, archives: list[Archive] | None = None) -> None:
        listed = self.archives() if archives is None else archives
        if self.gauges is not None:
            self.gauges.set_trash(len(listed), sum(a.size for a in listed), self.config.max_bytes)

    def expire(self, room_for: int = 0) -> list[Archive]:
        """Remove archives older than keep_for, then the oldest until `room_for` more bytes fit max_bytes, and
        temporary files no save is writing; what stays, oldest first."""
        now = self.clock()
        kept = []
        for archive in self.archives():
            if now - archive.saved_at > self.config.keep_for:
                self._remove(archive.path)
            else:
                kept.append(archive)
        while kept and sum(a.size for a in kept) + room_for > self.config.max_bytes:
            self._remove(kept.pop(0).path)
        if not self._lock.locked() or room_for:  # a save in progress owns its temporary file
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.folder):
                    if entry.name.startswith(PARTIAL_PREFIX):
                        self._remove(Path(entry.path))
        self.publish(kept)
        return kept

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- at plan time --------------------------------------------------------------------------------------
    def annotate(self, plan: Plan) -> Plan:
        """The plan with notes on what the trash will do: which candidates it saves first, and which it
        cannot (too large, its filesystem low, on the filesystem free_space frees), so they stay.

        From the plan's repo digests and sizes; the executor decides again on a fresh inspect before each save.
        Expired archives go first, so keep_for holds from run to run even when nothing is saved.
        """
        self.expire()
        checked = self.registry_check is not None
        saved = [
            c
            for c in plan.candidates
            if c.removes_image and (checked or not (c.repo_digests and self.digests_prove_copy()))
        ]
        if not saved:
            return plan
        which = (
            "have no confirmed registry copy yet (a registry check runs first)"
            if checked
            else "have no known registry copy"
        )
        notes = [
            f"trash: {len(saved)} candidates {which}: each is saved to {self.folder} before "
            f"its DELETE (about {sum(c.size for c in saved)} bytes; max_bytes {self.config.max_bytes})"
        ]
        too_large = [c for c in saved if c.size > self.config.max_bytes]
        if too_large:
            notes.append(
                f"trash: {len(too_large)} candidates are larger than max_bytes: not saved, so not deleted "
                f"({', '.join(c.image_id[:19] for c in too_large[:5])})"
            )
        existing = self.folder if self.folder.exists() else self.folder.parent
        try:
            st = self.statvfs(str(existing))
        except OSError as exc:
            notes.append(f"trash: cannot statvfs {self.folder} ({exc}): every save will fail, no such DELETE")
        else:
            avail, reserve = st.f_bavail * st.f_frsize, int(st.f_blocks * st.f_frsize * LOW_AVAIL_RATIO)
            if avail - min(c.size for c in saved) < reserve:
                notes.append(
                    f"trash: its filesystem is low ({avail} bytes available, {reserve} stay free): candidates "
                    "with no known registry copy will be skipped (not saved, not deleted)"
                )
        if plan.type == "free_space" and plan.filesystem and _same_filesystem(existing, plan.filesystem.path):
            notes.append(
                "trash: on the filesystem free_space frees: candidates with no known registry copy will be "
                "skipped (not saved, not deleted)"
            )
        return replace(plan, notes=(*plan.notes, *notes))

    # -- before a deletion --------------------------------------------------------------------------------
    async def needs_save(self, inspect: Mapping[str, Any]) -> bool:
        """No known registry copy: with a registry check, none confirmed; without, no repo digest or an engine
        whose repo digests prove nothing."""
        listed = inspect.get("RepoDigests")
        digests = [str(d) for d in listed] if isinstance(listed, list) else []
        if self.registry_check is not None:
            return not await self.registry_check.has_copy(digests)
        return not (digests and self.digests_prove_copy())

    async def before_delete(self, run: Run, image_id: str, inspect: Mapping[str, Any], audit: Audit) -> str | None:
        """Save the image if it needs it, and write its `trash` audit line; why it must not be deleted, else None.

        `audit(run, "trash", **fields)` writes the line (fsync'd) that a restore reads the archive's path from.
        """
        if not await self.needs_save(inspect):
            return None
        try:
            archive = await self.save(image_id, inspect, data_root=_data_root_freed(run))
        except TrashRefused as exc:
            return f"not saved to the trash, so not deleted: {exc}"
        await audit(
            run, "trash", image_id=image_id, file=str(archive.path), bytes=archive.size, platform=platform_of(inspect)
        )
        return None

    async def save(self, image_id: str, inspect: Mapping[str, Any], *, data_root: str | None = None) -> Archive:
        """Save one image into the trash within every bound; TrashRefused says why not."""
        if self._stop.is_set():
            raise TrashRefused("the exporter is shutting down")
        estimate = max(int(inspect.get("Size") or 0), 0)
        if estimate > self.config.max_bytes:
            raise TrashRefused(
                f"the image ({estimate} bytes) is larger than remediation.trash.max_bytes ({self.config.max_bytes})"
            )
        async with self._lock:
            try:
                await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                raise TrashRefused(f"cannot create {self.folder}: {exc}") from exc
            if data_root is not None and await asyncio.to_thread(_same_filesystem, self.folder, data_root):
                raise TrashRefused(f"{self.folder} is on the filesystem free_space is freeing ({data_root})")
            kept = await asyncio.to_thread(self.expire, estimate)
            used = sum(a.size for a in kept)
            try:
                st = await asyncio.to_thread(self.statvfs, str(self.folder))
            except OSError as exc:
                raise TrashRefused(f"cannot statvfs {self.folder}: {exc}") from exc
            fs_size, avail = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            reserve = int(fs_size * LOW_AVAIL_RATIO)
            if avail - estimate < reserve:
                raise TrashRefused(
                    f"the trash filesystem is low: {avail} bytes available, the image needs about {estimate} and "
                    f"{reserve} ({LOW_AVAIL_RATIO:.0%}) stay free"
                )
            limit = min(self.config.max_bytes - used, avail - reserve)
            saved_at = self.clock()
            final = self.folder / archive_name(image_id, saved_at)
            partial = self.folder / (PARTIAL_PREFIX + final.name)
            try:
                size = await self._write(image_id, platform_of(inspect), partial, limit)
                await asyncio.to_thread(_publish_file, partial, final)
            except BaseException:
                await asyncio.to_thread(self._remove, partial)
                raise
            archive = Archive(final, image_id, saved_at, size)
            self.publish([*kept, archive])
            return archive

    async def _write(self, image_id: str, platform: dict[str, str] | None, partial: Path, limit: int) -> int:
        """Stream the archive into `partial`, never past `limit` bytes; its size. TrashRefused when cut short."""
        written = 0
        abandoned = threading.Event()  # the caller gave up (a timeout, a cancel): the writer stops too
        try:
            handle = await asyncio.to_thread(open, partial, "xb")
        except OSError as exc:
            raise TrashRefused(f"cannot create {partial}: {exc}") from exc

        def sink(chunk: bytes) -> None:
            nonlocal written
            if self._stop.is_set() or abandoned.is_set():
                raise _CutShort("cut short: the exporter is shutting down")
            if written + len(chunk) > limit:
                raise _CutShort(f"cut short: the archive would pass the room left ({limit} bytes)")
            try:
                handle.write(chunk)
            except OSError as exc:
                raise _CutShort(f"cut short: {exc}") from exc
            written += len(chunk)

        try:
            await self.engine.save_image(image_id, sink, platform)
            await asyncio.to_thread(_flush, handle)
        except _CutShort as exc:
            raise TrashRefused(str(exc)) from exc
        except EngineError as exc:
            raise TrashRefused(f"the engine could not save it: {exc}") from exc
        except OSError as exc:
            raise TrashRefused(f"cannot write {partial}: {exc}") from exc
        finally:
            abandoned.set()
            try:
                # closing flushes what the buffer still holds; after a failed write that fails the same way
                handle.close()
            except OSError as exc:
                raise TrashRefused(f"cut short: {exc}") from exc
        if written == 0:
            raise TrashRefused("the engine sent an empty archive")
        return written


def _flush(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _publish_file(partial: Path, final: Path) -> None:
    """The rename makes the archive whole; the folder's fsync makes the rename survive a crash."""
    os.rename(partial, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_filesystem(folder: Path, data_root: str) -> bool:
    try:
        return folder.stat().st_dev == os.stat(data_root).st_dev
    except OSError:
        return False


def _data_root_freed(run: Run) -> str | None:
    """The data-root path a free_space run is freeing (None for other actions)."""
    if run.type != "free_space" or run.plan is None or run.plan.filesystem is None:
        return None
    return run.plan.filesystem.path
