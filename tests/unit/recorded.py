"""An Engine answering from one engine's recorded payloads (tests/fixtures/api/<engine>/, see its index.json).

Reads return what the real engine answered to the same request `exporter.engine.client.Engine` makes
(`/images/json?shared-size=1`, `/containers/json?all=1`, `/system/df?type=image&type=build-cache`); only
lookups (inspect by ID or name) are simulated, from the same recording. Writes and the docker client are
out of bounds: a unit test that reaches them fails.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker

from exporter.engine.apishapes import normalize_id
from exporter.engine.client import DISK_USAGE_KINDS, Engine, EngineNotFound, EngineUnavailable, Lane

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"
RECORDED_ENGINES = sorted(p.name for p in FIXTURES.iterdir() if (p / "index.json").exists())


def load(engine: str, name: str) -> Any:
    return json.loads((FIXTURES / engine / name).read_text())


class RecordedEngine(Engine):
    """One recorded engine. `failing` names reads that raise EngineUnavailable (an outage at that stage);
    `gone` holds image IDs deleted after the listing (their inspect answers 404); `calls` lists the reads
    made and `on_call` is told of each as it happens."""

    def __init__(self, engine: str) -> None:
        super().__init__("unix:///nonexistent/recorded-engine.sock")
        self.engine = engine
        self.api: str = str(load(engine, "index.json")["api_version"])
        self.api_version = self.api
        self.images: list[dict[str, Any]] = load(engine, "images-shared-size.json")
        self.containers: list[dict[str, Any]] = load(engine, "containers-all.json")
        df = FIXTURES / engine / "system-df-image-build-cache.json"
        self.df: dict[str, Any] = json.loads(df.read_text()) if df.exists() else load(engine, "system-df.json")
        self.inspect = load(engine, "image-inspect.json")
        self.info: dict[str, Any] = load(engine, "info.json")
        self.failing: set[str] = set()
        self.gone: set[str] = set()
        self.calls: list[str] = []
        self.on_call: Callable[[str], None] | None = None

    def _answer(self, call: str) -> None:
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        if call in self.failing:
            raise EngineUnavailable(f"recorded {self.engine}: {call} made to fail")

    async def _call(self, fn: Callable[[docker.APIClient], T], *, lane: str = "api") -> T:
        raise AssertionError("a unit test reached the docker client")

    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        self._answer("version_and_info")
        return load(self.engine, "version.json"), copy.deepcopy(self.info), self.api

    async def list_images(self) -> list[dict[str, Any]]:
        self._answer("list_images")
        return copy.deepcopy(self.images)

    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]:
        self._answer("list_containers")
        return copy.deepcopy(self.containers)

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        self._answer("inspect_image")
        for image in self.images:
            image_id = normalize_id(image["Id"])
            tags = image.get("RepoTags") or []
            if normalize_id(ref) == image_id or ref in tags or f"localhost/{ref}" in tags:
                if image_id in self.gone:
                    break
                if normalize_id(self.inspect["Id"]) == image_id:
                    return copy.deepcopy(self.inspect)
                return {"Id": image_id}  # recorded for one image only: the others have no Metadata
        raise EngineNotFound(f"No such image: {ref}", 404)

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        self._answer("inspect_container")
        for c in self.containers:
            if c["Id"].startswith(container_id):
                return {"Image": c["ImageID"]}
        raise EngineNotFound(f"No such container: {container_id}", 404)

    async def disk_usage(self, kinds: Sequence[str] = DISK_USAGE_KINDS) -> dict[str, Any]:
        self._answer("disk_usage")
        return copy.deepcopy(self.df)

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None = None
    ) -> None:
        """No live stream: connects, then ends at once, as when the engine closes it (the follower retries with
        backoff)."""
        if on_connected is not None:
            on_connected()

    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        raise AssertionError(f"a unit test reached remove_image({ref})")

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        raise AssertionError(f"a unit test reached tag_image({image_id}, {repository}:{tag})")

    async def prune_images(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("a unit test reached prune_images")

    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("a unit test reached prune_builds")
