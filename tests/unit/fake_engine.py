"""An in-memory engine for the executor's races: the few Engine methods it calls, with dockerd's semantics.

A fake is right here (and only here) because the interleavings must be exact: a tag moved, a container
created or an image re-pulled at one precise moment between a plan and a DELETE. The delete semantics are
REFERENCE.md "Deleting safely" (verified on dockerd 20.10) and moby's reference counting
(daemon/images/image_delete.go); an image's references are its tags and its digests (`repo@sha256:…`):
- DELETE by ID: 404 unknown; 409 when any container uses it; when its references are "single" (at most
  one tag, all of one repository: `isSingleReference`) every one is removed and the image deleted, with
  no references at all the image is deleted, else 409 "referenced in multiple repositories";
- DELETE by name (tag or digest): 404 unknown; 409 when the references are "single" and a container
  uses the image; else the name is removed, and for a tag whose repository keeps no other tag, that
  repository's digests too; the image is deleted when no reference is left;
- POST tag: moves the name to the image (404 unknown image).
Answers have the engine's shape (`Untagged` entries, then `Deleted` for the image and a layer).
Every DELETE that removes an image is logged with the engine state at that moment, for the safety checks.
A concurrent `docker rmi` by another client (`rmi_by_other`) makes the executor's next DELETE of that
image answer 500 "unrecognized image ID" or 404, as dockerd does to the loser of the race.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.engine.client import (
    DISK_USAGE_KINDS,
    Engine,
    EngineConflict,
    EngineError,
    EngineNotFound,
    EngineUnavailable,
    Lane,
)


def image_id(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


@dataclass
class FakeImage:
    id: str
    tags: set[str]
    arrived: float
    digests: set[str] = field(default_factory=set)
    last_tag_time: float | None = None  # set by `docker tag`, not by a pull (the classic store)

    def refs(self) -> set[str]:
        return self.tags | self.digests


@dataclass(frozen=True)
class Removal:
    """One image the engine deleted (or one tag it removed), and what was true of the image at that moment."""

    image_id: str
    target: str
    tags_before: frozenset[str]
    arrived: float
    in_use: bool
    refs_before: frozenset[str] = frozenset()  # tags and digests


class FakeEngine(Engine):
    """Images and containers in dictionaries; `before` runs before every call (the race hook)."""

    def __init__(self) -> None:
        super().__init__("unix:///nonexistent/fake.sock")
        self.images: dict[str, FakeImage] = {}
        self.containers: dict[str, str] = {}  # container ID -> image ID
        self.calls: list[tuple[str, str]] = []
        self.removals: list[Removal] = []
        self.untagged: list[Removal] = []  # every tag removed, with its image's state at that moment
        self.before: Callable[[str, str], None] | None = None
        self.timeout_on_delete: Callable[[str], bool] | None = None
        self.removed_by_others: list[Removal] = []
        self._raced: dict[str, int] = {}  # a name or ID of an image another client deleted -> status for us
        self._ids = itertools.count(1)
        self.now = 0.0

    # -- setting the scene (also what "someone else" does between calls) ---------------------------------
    def add(self, name: str, tags: tuple[str, ...] = (), arrived: float = 0.0, digests: tuple[str, ...] = ()) -> str:
        iid = image_id(name)
        for tag in tags:
            self.untag_quietly(tag)
        self.images[iid] = FakeImage(iid, set(tags), arrived, set(digests))
        return iid

    def untag_quietly(self, tag: str) -> None:
        for image in self.images.values():
            image.tags.discard(tag)

    def tag(self, iid: str, tag: str, when: float) -> None:
        """`docker tag`: moves the name; the target image counts as arriving now (LastTagTime)."""
        self.untag_quietly(tag)
        self.images[iid].tags.add(tag)
        self.images[iid].arrived = max(self.images[iid].arrived, when)
        self.images[iid].last_tag_time = when

    def pull(self, name: str, tag: str, when: float) -> str:
        """A re-pull that brings a new image under an existing tag (the old image keeps its other tags)."""
        return self.add(name, (tag,), arrived=when)

    def rmi_by_other(self, iid: str, status: int = 500) -> bool:
        """Someone's `docker rmi <id>` (no force) wins a race with ours: our next DELETE of it gets `status`."""
        image = self.images.get(iid)
        if image is None or self._used(iid) or not (_single(image.refs()) or not image.refs()):
            return False
        self.removed_by_others.append(self._record(image, iid))
        del self.images[iid]
        for name in (iid, *image.refs()):
            self._raced[name] = status
        return True

    def create_container(self, iid: str) -> str:
        cid = f"c{next(self._ids):063d}"
        self.containers[cid] = iid
        return cid

    def tag_owner(self, tag: str) -> FakeImage | None:
        return next((i for i in self.images.values() if tag in i.tags), None)

    def _find(self, name: str) -> FakeImage:
        image = self.images.get(name) or self.tag_owner(name)
        if image is None and "@" in name:
            image = next((i for i in self.images.values() if name in i.digests), None)
        if image is None:
            raise EngineNotFound(f"No such image: {name}", 404)
        return image

    def _hook(self, call: str, arg: str) -> None:
        self.calls.append((call, arg))
        if self.before is not None:
            self.before(call, arg)

    def _user(self, iid: str) -> str:
        return next(cid for cid, used in self.containers.items() if used == iid)

    def _used(self, iid: str) -> bool:
        return iid in self.containers.values()

    # -- what a poll reads (so the whole app can run on the fake) --------------------------------------
    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        return {"Version": "20.10.24", "Os": "linux", "Arch": "amd64"}, {"Driver": "overlay2"}, "1.41"

    async def list_images(self) -> list[dict[str, Any]]:
        return [
            {
                "Id": i.id,
                "RepoTags": sorted(i.tags),
                "RepoDigests": sorted(i.digests),
                "Created": int(i.arrived),
                "Size": 100,
                "SharedSize": 0,
                "Containers": -1,
            }
            for i in self.images.values()
        ]

    async def disk_usage(self, kinds: Sequence[str] = DISK_USAGE_KINDS) -> dict[str, Any]:
        raise EngineUnavailable("no /system/df in the fake engine")

    # -- the Engine methods the executor calls -------------------------------------------------------
    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        self._hook("inspect_image", ref)
        image = self._find(ref)
        tagged = image.last_tag_time
        metadata = {"LastTagTime": _rfc3339(tagged) if tagged is not None else "0001-01-01T00:00:00Z"}
        return {
            "Id": image.id,
            "RepoTags": sorted(image.tags),
            "RepoDigests": sorted(image.digests),
            "Metadata": metadata,
        }

    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]:
        self._hook("list_containers", "")
        return [{"Id": cid, "ImageID": iid, "State": "created"} for cid, iid in self.containers.items()]

    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        self._hook("remove_image", ref)
        status = self._raced.pop(ref, None)
        if status is not None and ref not in self.images and self.tag_owner(ref) is None:
            if status == 404:
                raise EngineNotFound(f"No such image: {ref}", 404)
            raise EngineError(f"unrecognized image ID {ref}", status)
        image = self._find(ref)
        answer: list[dict[str, Any]] = []
        refs = image.refs()
        if ref == image.id:
            if self._used(image.id):
                raise EngineConflict(f"conflict: unable to delete {image.id[7:19]} - image is being used", 409)
            if refs and not _single(refs):
                raise EngineConflict(
                    f"conflict: unable to delete {image.id[7:19]} - referenced in multiple repositories", 409
                )
            answer += [{"Untagged": t} for t in sorted(refs)]
            self.untagged += [self._record(image, t) for t in sorted(refs)]
        else:
            if _single(refs) and self._used(image.id):
                raise EngineConflict(
                    f"conflict: unable to remove repository reference {ref!r} (must force) - container"
                    f" {self._user(image.id)[:12]} is using its referenced image {image.id[7:19]}",
                    409,
                )
            removed = [ref]
            if "@" not in ref and not any(_repo(t) == _repo(ref) for t in image.tags - {ref}):
                removed += sorted(d for d in image.digests if _repo(d) == _repo(ref))
            for name in removed:
                answer.append({"Untagged": name})
                self.untagged.append(self._record(image, name))
            if refs - set(removed):
                image.tags -= set(removed)
                image.digests -= set(removed)
                return self._answer(ref, answer)
        self.removals.append(self._record(image, ref))
        del self.images[image.id]
        answer += [{"Deleted": image.id}, {"Deleted": "sha256:" + hashlib.sha256(image.id.encode()).hexdigest()}]
        return self._answer(ref, answer)

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        """`docker tag`: the name moves, LastTagTime is now; what the image's age means is unchanged."""
        name = f"{repository}:{tag}"
        self._hook("tag_image", name)
        image = self._find(image_id)
        self.untag_quietly(name)
        image.tags.add(name)
        image.last_tag_time = self.now

    def _record(self, image: FakeImage, target: str) -> Removal:
        return Removal(
            image.id, target, frozenset(image.tags), image.arrived, self._used(image.id), frozenset(image.refs())
        )

    def _answer(self, ref: str, answer: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.timeout_on_delete is not None and self.timeout_on_delete(ref):
            raise EngineUnavailable("engine did not answer within 35s")  # done by the engine, answer lost
        return answer


def _repo(ref: str) -> str:
    """A reference's repository: before `@`, else before the `:` after the last `/`."""
    if "@" in ref:
        return ref.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def _single(refs: set[str]) -> bool:
    """moby's isSingleReference: at least one reference, at most one tag, all of one repository."""
    return bool(refs) and sum("@" not in r for r in refs) <= 1 and len({_repo(r) for r in refs}) == 1


def _rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
