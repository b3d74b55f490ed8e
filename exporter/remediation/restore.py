"""Bringing deleted images back: pull by repo digest, check the image ID, re-create every tag.

What a restore needs comes from the audit log alone (the `image` line of every `deleted` outcome carries
the image ID, its tags, its repo digests and its build time), so it works after a restart, on another
exporter process, and from the command line without a running exporter.

Why the image ID check: a repo digest names a manifest, and what it unpacks to here is the deleted image
only if the registry still serves the same content. On the classic store the image ID is the config
digest; on the containerd store it is the manifest digest. Either way an image that came back with
another ID is not the one deleted, and no tag is moved onto it.

Why tags are not moved by default: a tag the deleted image had may name another image by now (a newer
build, a deliberate re-tag). Moving it back would silently replace what someone chose; only `force` does.

An image that the trash saved before its deletion (the run's `trash` line names the archive) is loaded back
from that archive (`POST /images/load`), then checked and tagged the same way. The archive goes first while
it is there: it is the image as deleted and needs no network (on the containerd store and Podman a repo
digest names a place to try, not a proven copy). It stays for another restore until the trash expires it.

Pulls and loads are not announced by an intent line (nothing is lost by either); every restore outcome is
audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from exporter.core.snapshot import DigestRef, ImageRef
from exporter.engine.apishapes import normalize_id
from exporter.engine.errors import EngineError, EngineNotFound
from exporter.engine.seam import EngineSeam
from exporter.remediation.planner import restore_hint
from exporter.remediation.records import record_json

RestoreResult = Literal["restored", "present", "would_restore", "no_copy", "mismatch", "failed"]
#: Results that count as a failure (`docker_remediation_restored_images_total{result}` counts each).
FAILED: frozenset[RestoreResult] = frozenset({"no_copy", "mismatch", "failed"})


class RestoreError(Exception):
    """The restore cannot start: no such audit log, no such run, or no deleted image of that ID in it."""


@dataclass(frozen=True)
class Deleted:
    """One image a run deleted, as its audit line describes it."""

    image_id: str
    tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: float | None
    size: int
    #: The trash archive saved right before the deletion ("" when none was).
    trash: str = ""

    @classmethod
    def from_line(cls, line: dict[str, Any], trash: str = "") -> Deleted:
        tags, digests = line.get("tags"), line.get("repo_digests")
        references = [str(r) for r in line.get("references") or []]
        if not isinstance(tags, list):  # a line without the restore fields: what its references say
            tags = [r for r in references if ImageRef.parse(r) is not None]
        if not isinstance(digests, list):
            digests = [r for r in references if DigestRef.parse(r) is not None]
        return cls(
            str(line.get("image_id") or ""),
            tuple(str(t) for t in tags),
            tuple(str(d) for d in digests),
            line.get("created") if isinstance(line.get("created"), int | float) else None,
            int(line.get("size") or 0),
            trash,
        )

    @property
    def in_trash(self) -> bool:
        return bool(self.trash) and Path(self.trash).is_file()

    @property
    def commands(self) -> str:
        """The shell lines a person can paste to do this restore by hand (or why there are none)."""
        if self.in_trash:
            return " && ".join(
                [f"docker load -i {self.trash}", *(f"docker tag {self.image_id} {t}" for t in self.tags)]
            )
        return restore_hint(self.image_id, self.repo_digests, self.tags)

    def to_json(self) -> dict[str, Any]:
        data = record_json(self, omit_empty=("trash",))
        data["restorable"] = bool(self.repo_digests) or self.in_trash
        data["commands"] = self.commands
        return data


@dataclass
class Restored:
    """What one restore did for one deleted image (also its audit line)."""

    image_id: str
    result: RestoreResult
    detail: str = ""
    pulled: str = ""
    #: The trash archive the image was loaded from ("" when it was not).
    loaded: str = ""
    tagged: list[str] = field(default_factory=list)
    #: Tags that name another image now, with that image's ID: left alone unless forced.
    conflicts: dict[str, str] = field(default_factory=dict)
    commands: str = ""

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


def deleted_images(audit_path: str | Path, run_id: str) -> list[Deleted]:
    """Every image the run deleted, from its audit lines (the last line per image wins: a `confirmed_by`
    line after an `unknown` one)."""
    found: dict[str, Deleted] = {}
    trashed: dict[str, str] = {}  # image ID -> the archive its `trash` line names
    seen_run = False
    try:
        with open(audit_path, encoding="utf-8", errors="replace") as handle:
            for text in handle:
                if run_id not in text:  # most lines are other runs': skip them without parsing
                    continue
                try:
                    line = json.loads(text)
                except ValueError:  # a line cut by a full disk
                    continue
                if not isinstance(line, dict) or line.get("run_id") != run_id:
                    continue
                seen_run = True
                if line.get("event") == "trash" and line.get("image_id") and isinstance(line.get("file"), str):
                    trashed[str(line["image_id"])] = line["file"]
                if line.get("event") == "image" and line.get("result") == "deleted" and line.get("image_id"):
                    deleted = Deleted.from_line(line, trashed.get(str(line["image_id"]), ""))
                    found[deleted.image_id] = deleted
    except OSError as exc:
        raise RestoreError(f"cannot read audit log {audit_path}: {exc}") from exc
    if not seen_run:
        raise RestoreError(f"run {run_id} is not in the audit log {audit_path}")
    return list(found.values())


def select(images: Iterable[Deleted], image: str | None) -> list[Deleted]:
    """All of them, or the one whose ID (full, without `sha256:`, or a 12+ character prefix) is `image`."""
    listed = list(images)
    if image is None:
        return listed
    wanted = image.removeprefix("sha256:")
    if len(wanted) < 12:
        raise RestoreError(f"image {image!r}: give at least 12 hex characters of the image ID")
    chosen = [d for d in listed if d.image_id.removeprefix("sha256:").startswith(wanted)]
    if not chosen:
        raise RestoreError(f"image {image!r} is not among the images the run deleted")
    return chosen


async def _named(engine: EngineSeam, ref: str) -> str | None:
    """The image ID `ref` names now, None when it names nothing."""
    try:
        answer = await engine.inspect_image(ref)
    except EngineNotFound:
        return None
    return normalize_id(str(answer.get("Id", "")))


async def restore_one(engine: EngineSeam, image: Deleted, *, force: bool = False, dry_run: bool = False) -> Restored:
    """Bring one deleted image back: pull a repo digest, check the ID, re-create every tag."""
    out = Restored(image.image_id, "failed", commands=image.commands)
    if not image.repo_digests and not image.in_trash:
        out.result, out.detail = "no_copy", "no repo digest was recorded: no registry copy is known"
        if image.trash:
            out.detail += f"; the trash archive {image.trash} is gone (expired or removed)"
        return out
    try:
        for tag in image.tags:
            current = await _named(engine, tag)
            if current is not None and current != image.image_id:
                out.conflicts[tag] = current
        present = await _named(engine, image.image_id) == image.image_id
        if dry_run:
            out.result = "would_restore"
            how = f"load {image.trash}" if image.in_trash else "pull"
            out.detail = "already present: only tags to re-create" if present else f"would {how}, check and tag"
            return out
        if not present:
            problems: list[str] = []
            if image.in_trash:
                try:
                    said = await engine.load_archive(image.trash)
                except EngineError as exc:
                    problems.append(f"load {image.trash}: {exc}")
                else:
                    out.loaded = image.trash
                    if await _named(engine, image.image_id) != image.image_id:
                        out.result = "mismatch"
                        out.detail = f"{image.trash} loaded as {'; '.join(said)}, not {image.image_id}: no tag moved"
                        return out
            for pinned in image.repo_digests if not out.loaded else ():
                ref = DigestRef.parse(pinned)
                if ref is None:
                    continue
                try:
                    await engine.pull_digest(ref.repository, ref.digest)
                except EngineError as exc:
                    problems.append(f"{pinned}: {exc}")
                    continue
                out.pulled = pinned
                break
            if not out.pulled and not out.loaded:
                out.detail = "neither the trash archive could be loaded nor a repo digest pulled: " + "; ".join(
                    problems
                )
                return out
            got = await _named(engine, out.pulled) if out.pulled else image.image_id
            if got != image.image_id:
                out.result = "mismatch"
                out.detail = f"{out.pulled} came back as {got}, not {image.image_id}: no tag moved onto it"
                return out
        for tag in image.tags:
            if tag in out.conflicts and not force:
                continue
            parsed = ImageRef.parse(tag)
            if parsed is None:
                continue
            await engine.restore_tag(image.image_id, parsed.repository, parsed.tag)
            out.tagged.append(tag)
    except EngineError as exc:
        out.result, out.detail = "failed", f"engine error: {exc}"
        return out
    out.result = "present" if present else "restored"
    if out.conflicts and not force:
        moved = ", ".join(f"{t} (now {i})" for t, i in out.conflicts.items())
        out.detail = f"left alone, naming another image now (force moves them): {moved}"
    return out


def audit_line(run_id: str, restored: Restored, *, trigger: str, dry_run: bool) -> dict[str, Any]:
    """The audit record of one restore outcome (`event: restore`, the deleting run's `run_id`)."""
    fields = restored.to_json()
    fields["image_id"] = fields.pop("id")  # the audit log's name for it, as in the `image` lines
    return {"ts": time.time(), "event": "restore", "run_id": run_id, "trigger": trigger, "dry_run": dry_run} | fields
