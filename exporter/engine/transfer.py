"""The Docker backend's restore and trash lane: whole images out of the engine and back in.

Pulls, saves and loads take minutes where every other call takes seconds, so they run in the SDK's restore
thread (`SdkLanes.call_restore`), bounded by RESTORE_PULL_TIMEOUT, and never hold up a poll on the `api`
lane. `client.Engine` composes one `DockerTransfer` and hands its calls on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TypeVar

import docker
import docker.errors

from exporter.engine.apiversion import api_at_least
from exporter.engine.sdk import READ_CHUNK, SdkLanes
from exporter.engine.seam import RESTORE_PULL_TIMEOUT

T = TypeVar("T")


class DockerTransfer:
    """`TransferSeam` over the docker SDK: pull by digest, tag for a restore, save to and load from an archive."""

    def __init__(self, sdk: SdkLanes, timeout: Callable[[], float]) -> None:
        self._sdk = sdk
        #: The engine's `docker.timeout`, read at each call: the bound of `restore_tag`, an ordinary `api` call.
        self._timeout = timeout

    async def pull_digest(self, repository: str, digest: str) -> None:
        """`POST /images/create?fromImage=<repository>&tag=<digest>`: pull one image by its repo digest.

        The engine reports a failed pull inside its progress stream (HTTP 200 then `{"error": ...}`), so the
        stream is read to its end and such a line raises.
        """

        def pull(c: docker.APIClient) -> None:
            for line in c.pull(repository, tag=digest, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise docker.errors.APIError(f"pull {repository}@{digest}: {line['error']}")

        await self._on_restore_lane(pull, f"pull {repository}@{digest}")

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        """`POST /images/{id}/tag` for a restore: point `repository:tag` at the image (moving it if it names
        another; the restore decides beforehand whether it may)."""

        def tag_it(c: docker.APIClient) -> None:
            if not c.tag(image_id, repository, tag, force=True):
                raise docker.errors.APIError(f"tag {image_id} as {repository}:{tag}: refused")

        await self._sdk.call(tag_it, "api", self._timeout())

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        """`GET /images/{id}/get`: stream the image's archive into `sink`, one chunk at a time.

        `sink` may raise to cut the save short (a full trash, a stop); that error is raised here unchanged and
        the connection is closed. `platform` (API 1.48+) saves one platform of the image: the containerd store
        fails a save of every platform when content of another platform was never pulled.
        """

        def save(c: docker.APIClient) -> None:
            params: dict[str, str] = {}
            if platform and api_at_least(str(c.api_version), "1.48"):
                params["platform"] = json.dumps(dict(platform), separators=(",", ":"))
            response = c._get(c._url("/images/{0}/get", image_id), params=params, stream=True)
            try:
                c._raise_for_status(response)
                for chunk in response.iter_content(READ_CHUNK):
                    sink(chunk)
            finally:
                response.close()

        await self._on_restore_lane(save, f"save {image_id}")

    async def load_archive(self, path: str) -> list[str]:
        """`POST /images/load` of the archive at `path`, streamed from the file; what the engine says it loaded
        (`Loaded image ID: sha256:…`, `Loaded image: name:tag`), each line's text. A failed load reported in the
        stream (HTTP 200, then `{"error": …}`) raises."""

        def load(c: docker.APIClient) -> list[str]:
            said: list[str] = []
            with open(path, "rb") as archive:
                for line in c.load_image(archive):
                    if isinstance(line, dict) and line.get("error"):
                        raise docker.errors.APIError(f"load: {line['error']}")
                    if isinstance(line, dict) and line.get("stream"):
                        said.append(str(line["stream"]).strip())
            return said

        return await self._on_restore_lane(load, "load")

    async def _on_restore_lane(self, fn: Callable[[docker.APIClient], T], what: str) -> T:
        return await self._sdk.call_restore(fn, RESTORE_PULL_TIMEOUT, what)
