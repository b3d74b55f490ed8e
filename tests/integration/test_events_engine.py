"""`docker tag`, `rmi` and `load` reach /metrics through the event stream, applied without a full poll.

With a 10 minute poll interval only events can explain a change; `docker_exporter_polls_total` says whether
the exporter re-listed every image to show it. On the classic store a tag or untag is applied by inspecting
the one image the event names (no poll at all); a load adds an image, which moves other images' SharedSize on
engines that list it (API 1.42+), so there one debounced reconciling poll may follow. The containerd store's
inspect disagrees with its listing (sizes, digests), so there every image event still re-lists (debounced).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.engines import engine_store
from tests.harness.exporter import ExporterProcess
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import listed_ref, load_images, load_scenario, scenario_basic, tiny_images

pytestmark = pytest.mark.engine


def _ref_labels(ref: str) -> dict[str, str]:
    slash, colon = ref.rfind("/"), ref.rfind(":")
    repo, tag = (ref[:colon], ref[colon + 1 :]) if colon > slash else (ref, "latest")
    return {"repository": repo, "tag": tag}


@pytest.fixture
def mutable(dockerd: PrivateDockerd) -> Iterator[PrivateDockerd]:
    load_scenario(dockerd, scenario_basic())
    yield dockerd


def _polls(exp: ExporterProcess) -> float | None:
    return exp.sample("docker_exporter_polls_total")


def test_tag_rmi_and_load_are_applied_from_events_without_a_full_poll(
    mutable: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    exp = exporter_factory(
        mutable,
        {
            "poll": {"interval": "10m", "disk_usage_interval": "10m"},
            "filesystem": {"path": str(mutable.data_root)},
            "state": {"path": str(tmp_path / "s.json")},
        },
    )
    store = engine_store(mutable)
    exactly = store != "containerd"
    images_before = exp.sample("docker_images")
    assert _polls(exp) == 1  # ready after the first poll, and no second one follows the start

    mutable.cli("tag", "team/web:1.0", "events/extra:1")
    extra = _ref_labels(listed_ref(mutable, "events/extra:1"))
    exp.wait_for(lambda: exp.sample("docker_image_size_bytes", extra) is not None, what="the new tag on /metrics")
    assert exp.sample("docker_images") == images_before
    if exactly:
        assert _polls(exp) == 1

    mutable.cli("rmi", "events/extra:1")  # the classic store's untag event names the image ID, not the tag
    exp.wait_for(lambda: exp.sample("docker_image_size_bytes", extra) is None, what="the removed tag gone")
    original = _ref_labels(listed_ref(mutable, "team/web:1.0"))
    assert exp.sample("docker_image_size_bytes", original) is not None  # the image keeps its other tag
    if exactly:
        assert _polls(exp) == 1

    (spec,) = tiny_images(1, prefix="events/loaded")
    load_images(mutable, [spec])
    loaded = _ref_labels(listed_ref(mutable, spec.tags[0]))
    exp.wait_for(lambda: exp.sample("docker_image_size_bytes", loaded) is not None, what="the loaded image")
    exp.wait_for(lambda: exp.sample("docker_images") == (images_before or 0) + 1, what="the image count")
    if exactly:
        polls = _polls(exp)
        assert polls is not None and polls <= 2  # at most one reconciling poll (SharedSize moved)
