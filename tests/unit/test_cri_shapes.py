"""The CRI backend's translation into the engine API's shapes, read back by `apishapes` as the poller does."""

from __future__ import annotations

import json

import pytest
from cri_api.v1 import api_pb2 as pb

from exporter.cli import resolve_runtime
from exporter.config import Config
from exporter.core.engineaddress import AddressError
from exporter.engine import apishapes
from exporter.engine.cri import shapes

ID = "sha256:" + "ab" * 32
SPEC = {"created": "2024-03-01T00:00:00Z", "config": {"Labels": {"keep": "true", "n": 1}}}


def test_an_image_listed_once_per_reference_is_one_image_with_every_tag() -> None:
    listed = [
        pb.Image(id=ID, repo_tags=["docker.io/team/web:1.0"], size=10),
        pb.Image(
            id=ID, repo_tags=["docker.io/team/web:latest"], repo_digests=["docker.io/team/web@sha256:" + "cd" * 32]
        ),
        pb.Image(id="sha256:" + "ef" * 32, size=5, pinned=True),
    ]
    merged = shapes.merged(listed)
    assert list(merged) == [ID, "sha256:" + "ef" * 32]
    assert list(merged[ID].repo_tags) == ["docker.io/team/web:1.0", "docker.io/team/web:latest"]
    assert len(merged[ID].repo_digests) == 1


def test_listing_and_inspect_read_back_as_the_same_image_with_unknowns_absent() -> None:
    image = pb.Image(id=ID, repo_tags=["docker.io/team/web:1.0"], size=1234)
    config = shapes.image_config({"info": json.dumps({"imageSpec": SPEC})})
    assert config.labels == {"keep": "true"}  # a non-string label value is not a label
    version = shapes.version(
        pb.VersionResponse(runtime_name="containerd", runtime_version="1.6.20", runtime_api_version="v1")
    )
    info = shapes.info("containerd", "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs")
    engine = apishapes.parse_engine_info(version, info, "v1")
    assert (engine.runtime, engine.storage_driver, engine.containerd_store) == ("containerd", "overlayfs", False)
    assert engine.data_root == "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
    (listed,) = apishapes.parse_images([shapes.listed_image(image, config)], engine)
    inspected = apishapes.parse_image_inspect(shapes.inspected_image(image, config), engine)
    assert listed.created == inspected.created == 1709251200.0
    assert listed.size == inspected.size == 1234
    assert listed.labels == inspected.labels == {"keep": "true"}
    assert listed.refs == inspected.refs
    assert listed.shared_size is None and listed.unique_size is None
    assert apishapes.parse_last_tag_time(shapes.inspected_image(image, config)) is None
    usage = apishapes.parse_disk_usage({"LayersSize": -1, "Images": None, "ImageUsage": {"Items": []}}, 0.0, engine)
    assert (usage.layers_size, usage.reclaimable, usage.build_cache) == (None, None, None)


def test_a_verbose_status_without_an_image_spec_leaves_created_and_labels_unknown() -> None:
    assert shapes.image_config({}) == shapes.ImageConfig(0, {})
    assert shapes.image_config({"info": "not json"}) == shapes.ImageConfig(0, {})


def test_containers_and_their_last_use() -> None:
    c = pb.Container(id="c1", image_ref=ID, state=pb.CONTAINER_EXITED)
    (parsed,) = apishapes.parse_containers([shapes.container(c)])
    assert (parsed.image_id, parsed.state) == (ID, "exited")
    status = pb.ContainerStatus(started_at=1_700_000_000_000_000_000, finished_at=1_700_000_060_500_000_000)
    assert apishapes.parse_container_last_use(shapes.container_state(status)) == pytest.approx(1_700_000_060.5)
    assert apishapes.parse_container_last_use(shapes.container_state(pb.ContainerStatus())) is None


def test_sandbox_image_and_pinned() -> None:
    assert shapes.sandbox_image({"config": json.dumps({"sandboxImage": "registry.k8s.io/pause:3.6"})}) == (
        "registry.k8s.io/pause:3.6"
    )
    assert shapes.sandbox_image({}) is None
    assert shapes.pinned(pb.Image(id=ID, pinned=True), {})
    assert shapes.pinned(pb.Image(id=ID), {shapes.PINNED_LABEL: "pinned"})
    assert not shapes.pinned(pb.Image(id=ID), {})


def test_a_docker_engine_and_a_runtime_together_are_refused() -> None:
    config = Config.model_validate({"runtime": {"endpoint": "unix:///run/containerd/containerd.sock"}})
    assert resolve_runtime(None, None, config) == "unix:///run/containerd/containerd.sock"
    assert resolve_runtime("unix:///x.sock", None, config) == "unix:///x.sock"
    with pytest.raises(AddressError, match="both a Docker engine"):
        resolve_runtime(None, "unix:///var/run/docker.sock", config)
    with pytest.raises(AddressError, match="unix:///path"):
        resolve_runtime("tcp://node:10010", None, Config())
    assert resolve_runtime(None, "unix:///var/run/docker.sock", Config()) is None
