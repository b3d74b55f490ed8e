"""The engine facade against a real private engine: the query parameters it picks for the negotiated API
version take effect, stopped containers are listed, and an absent engine is EngineUnavailable.

Runs on whichever engine `DIE_ENGINE` selects, so the matrix covers 1.41 (where `shared-size` and `?type=`
are ignored), 1.45/1.51 and Podman (which claims 1.41 and answers SharedSize 0).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from exporter.engine import Engine, EngineUnavailable, api_at_least
from tests.harness.images import LoadedScenario

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
