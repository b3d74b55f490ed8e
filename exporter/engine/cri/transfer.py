"""The CRI backend's restore and trash lane: what a CRI runtime can do of `TransferSeam`.

It can pull, and so bring an image back by its digest; it cannot tag, export or load an image, so a tag comes
back by pulling it again (checked to name the restored image) and the trash needs a Docker engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from exporter.engine.cri.rpc import CriChannel
from exporter.engine.errors import EngineError


class CriTransfer:
    """`TransferSeam` over a CRI runtime's channel: pulls on the channel's restore thread."""

    def __init__(self, channel: CriChannel) -> None:
        self._cri = channel

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        """The CRI cannot tag: the tag comes back by pulling `repository:tag`, which names the restored image
        only while the registry's tag still points at it. Checked after the pull; an EngineError says so
        when the registry's tag has moved (the image it names now was pulled, the restored one is untouched)."""
        await self._cri.pull(f"{repository}:{tag}")
        status = await self._cri.status(f"{repository}:{tag}", lane="delete")
        if status is None or status.image.id != image_id:
            now = status.image.id if status is not None else "nothing"
            raise EngineError(f"{repository}:{tag} in the registry is {now} now, not {image_id}: tag not restored")

    async def pull_digest(self, repository: str, digest: str) -> None:
        """CRI `PullImage` of `repository@digest`, on a thread of its own (minutes of download)."""
        await self._cri.pull(f"{repository}@{digest}")

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        raise EngineError("the CRI cannot export an image: remediation.trash needs a Docker engine")

    async def load_archive(self, path: str) -> list[str]:
        raise EngineError("the CRI cannot load an image archive: remediation.trash needs a Docker engine")
