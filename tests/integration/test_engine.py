"""The engine facade against a real private engine: the query parameters it picks for the negotiated API
version take effect, stopped containers are listed, and an absent engine is EngineUnavailable.

Runs on whichever engine `DIE_ENGINE` selects, so the matrix covers 1.41 (where `shared-size` and `?type=`
are ignored), 1.45/1.51 and Podman (which claims 1.41 and answers SharedSize 0).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from exporter.engine.apishapes import normalize_id
from exporter.engine.client import Engine, EngineConflict, EngineNotFound, EngineUnavailable
from exporter.engine.earlyread import api_at_least
from tests.harness.dockerd import PrivateDockerd
from tests.harness.images import LoadedScenario, load_images, tiny_images

TIMEOUT = 60.0


@pytest.fixture
async def engine(loaded_dockerd: LoadedScenario) -> AsyncIterator[Engine]:
    facade = Engine(loaded_dockerd.engine.host, timeout=TIMEOUT)
    yield facade
    facade.close()


async def is_podman(engine: Engine) -> bool:
    version, _info, _api = await engine.version_and_info()
    return any("podman" in str(c.get("Name", "")).lower() for c in version.get("Components") or [])


async def test_list_images_has_shared_sizes_from_api_1_42(engine: Engine, loaded_dockerd: LoadedScenario) -> None:
    images = await engine.list_images()
    assert {i["Id"].removeprefix("sha256:") for i in images} >= {
        loaded_dockerd.ids[k].removeprefix("sha256:") for k in ("web", "worker")
    }
    shared = [i["SharedSize"] for i in images]
    if api_at_least(engine.api_version, "1.42"):  # asked with shared-size=1: computed for every image
        assert all(s >= 0 for s in shared) and any(s > 0 for s in shared)
    elif not await is_podman(engine):  # 1.41 ignores the parameter: -1, "not computed"
        assert all(s == -1 for s in shared)


async def test_disk_usage_sizes_only_images_and_build_cache_where_the_api_can(engine: Engine) -> None:
    df = await engine.disk_usage()
    assert "Images" in df or "ImageUsage" in df
    assert "BuildCache" in df or "BuildCacheUsage" in df
    if api_at_least(engine.api_version, "1.42") and not await is_podman(engine):
        assert df.get("Containers") is None and df.get("Volumes") is None  # ?type= honoured: not computed
    else:
        assert isinstance(df.get("Containers"), list)  # ?type= not sent (or ignored): everything computed


async def test_containers_include_stopped_ones(engine: Engine, loaded_dockerd: LoadedScenario) -> None:
    listed = {c["Id"]: c for c in await engine.list_containers()}
    stopped = listed[loaded_dockerd.containers["worker-stopped"]]
    assert stopped["State"] != "running"


async def test_an_absent_engine_is_unavailable() -> None:
    facade = Engine("unix:///nonexistent/engine-test.sock", timeout=5)
    try:
        with pytest.raises(EngineUnavailable):
            await facade.list_images()
        with pytest.raises(EngineUnavailable):
            await facade.disk_usage()
    finally:
        facade.close()


async def test_the_delete_lane_reads_what_the_sdk_reads(engine: Engine, loaded_dockerd: LoadedScenario) -> None:
    """The delete lane's lean unix-socket client and the SDK see the same image and containers."""
    for key in ("web", "worker"):
        image_id = loaded_dockerd.ids[key]
        assert await engine.inspect_image(image_id, lane="delete") == await engine.inspect_image(image_id)
    tag = loaded_dockerd.spec("web").tags[0]
    assert await engine.inspect_image(tag, lane="delete") == await engine.inspect_image(tag)
    lean = {c["Id"]: c["ImageID"] for c in await engine.list_containers(lane="delete")}
    assert lean == {c["Id"]: c["ImageID"] for c in await engine.list_containers()}
    assert loaded_dockerd.containers["worker-stopped"] in lean
    with pytest.raises(EngineNotFound):
        await engine.inspect_image("sha256:" + "0" * 64, lane="delete")


async def test_the_delete_lane_is_refused_what_the_engine_refuses(
    engine: Engine, loaded_dockerd: LoadedScenario
) -> None:
    """Never forced: an image a stopped container uses stays (409), an unknown one is a 404."""
    worker = loaded_dockerd.ids["worker"]
    with pytest.raises(EngineConflict):
        await engine.remove_image(worker)
    assert normalize_id((await engine.inspect_image(worker)).get("Id", "")) == normalize_id(worker)
    with pytest.raises(EngineNotFound):
        await engine.remove_image("sha256:" + "0" * 64)


async def test_the_delete_lane_deletes_by_id(dockerd: PrivateDockerd) -> None:
    (image_id,) = load_images(dockerd, tiny_images(1, prefix="lean/img"))
    facade = Engine(dockerd.host, timeout=TIMEOUT)
    try:
        answer = await facade.remove_image(image_id)
        assert normalize_id(image_id) in {normalize_id(str(e["Deleted"])) for e in answer if e.get("Deleted")}
        with pytest.raises(EngineNotFound):
            await facade.inspect_image(image_id, lane="delete")
    finally:
        facade.close()
