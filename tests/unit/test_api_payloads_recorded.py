"""The recorded engine payloads (tests/fixtures/api) are complete and show the differences docs/engines.md states.

If an engine is re-recorded (scripts/record-api-payloads.py) and one of these facts changes, the docs and
the exporter's handling of that engine need a look too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

API = Path(__file__).resolve().parents[1] / "fixtures" / "api"
ENGINES = ("bookworm", "trixie", "trixie-containerd", "sid", "sid-containerd", "podman")
CONTAINERD = ("trixie-containerd", "sid-containerd")


def load(engine: str, name: str) -> Any:
    return json.loads((API / engine / name).read_text())


def index(engine: str) -> dict[str, Any]:
    data: dict[str, Any] = load(engine, "index.json")
    return data


@pytest.mark.parametrize("engine", ENGINES)
def test_every_indexed_file_exists_and_parses(engine: str) -> None:
    idx = index(engine)
    assert idx["engine"] == engine
    assert load(engine, "version.json")["ApiVersion"] == idx["api_version"]
    for name in idx["files"]:
        load(engine, name)
    assert idx["files"]["delete-conflict.json"]["status"] == 409
    assert idx["files"]["delete-unknown.json"]["status"] == 404
    assert idx["files"]["delete-untag.json"]["status"] == 200


def test_api_versions() -> None:
    got = {e: index(e)["api_version"] for e in ENGINES}
    assert got == {
        "bookworm": "1.41",
        "trixie": "1.45",
        "trixie-containerd": "1.45",
        "sid": "1.51",
        "sid-containerd": "1.51",
        "podman": "1.41",
    }


def test_untagged_shapes_by_version() -> None:
    dangling_id = index("bookworm")["images"]["dangling"]["config_digest"]
    old = next(i for i in load("bookworm", "images.json") if i["Id"] == dangling_id)
    assert old["RepoTags"] == ["<none>:<none>"] and old["RepoDigests"] == ["<none>@<none>"]
    assert "VirtualSize" in old
    for engine in ("trixie", "sid"):
        new = next(i for i in load(engine, "images.json") if i["Id"] == dangling_id)
        assert new["RepoTags"] == [] and new["RepoDigests"] == [] and "VirtualSize" not in new
    podman = next(i for i in load("podman", "images.json") if i["Id"] == dangling_id)
    assert podman["RepoTags"] is None and podman["Dangling"] is True


def test_containers_and_shared_size_fill_in_by_version() -> None:
    assert {i["Containers"] for i in load("trixie", "images.json")} == {-1}
    assert {i["Containers"] for i in load("sid", "images.json")} == {0, 1}
    assert {i["SharedSize"] for i in load("bookworm", "images-shared-size.json")} == {-1}
    assert {i["SharedSize"] for i in load("trixie", "images-shared-size.json")} == {0, 49152}


def test_containerd_store_ids_are_manifest_digests_and_sizes_bigger() -> None:
    for engine in CONTAINERD:
        idx = index(engine)["images"]
        assert all("engine_id" in v for v in idx.values()), engine  # never the config digest
        classic = {i["RepoTags"][0]: i["Size"] for i in load("sid", "images.json") if i["RepoTags"]}
        for image in load(engine, "images.json"):
            if image["RepoTags"]:
                assert image["Size"] > classic[image["RepoTags"][0]], (engine, image["RepoTags"])
                assert image["RepoDigests"], "loaded images get a digest on the containerd store"


def test_events_differ_per_engine() -> None:
    def actions(engine: str) -> list[str]:
        return [e["Action"] for e in load(engine, "events.json") if e["Type"] == "image"]

    assert "prune" in actions("bookworm") and "prune" in actions("sid")
    for engine in (*CONTAINERD, "podman"):
        assert "prune" not in actions(engine), engine
    assert actions("podman")[0] == "loadfromarchive"
    untag_names = [e["Actor"]["Attributes"]["name"] for e in load("sid", "events.json") if e["Action"] == "untag"]
    assert all(n.startswith("sha256:") for n in untag_names)  # classic: the ID, not the tag
    untag_names = [
        e["Actor"]["Attributes"]["name"] for e in load("sid-containerd", "events.json") if e["Action"] == "untag"
    ]
    assert "doomed:2" in untag_names  # containerd store: the reference


def test_podman_refuses_dangling_false_prune_and_reports_failed_deletes() -> None:
    assert index("podman")["files"]["prune-unused-label.json"]["status"] == 500
    web = index("podman")["images"]["web"]["config_digest"].removeprefix("sha256:")
    deletes = [e for e in load("podman", "events.json") if e["Action"] == "delete" and e["Actor"]["ID"] == web]
    assert deletes, "podman emits a delete event for the refused (409) removal"
    assert any(i["Id"].endswith(web) for i in load("podman", "images-after.json"))  # yet the image is still there
