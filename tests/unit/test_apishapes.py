"""API payload shapes across engines, from real recordings (tests/fixtures/api/<engine>/, see its index.json).

Recorded with scripts/record-api-payloads.py on dockerd 20.10 (API 1.41), 26.1 (1.45) and 28.5 (1.51), each
with the classic and the containerd image store, and Podman 4.3. `synthetic-1.52` is built from the 1.51
recording in the documented 1.52 shape (no Docker 29 exists here); its index.json says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter.core.snapshot import ImageRef
from exporter.engine import apishapes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"
ENGINES = sorted(p.name for p in FIXTURES.iterdir() if (p / "index.json").exists())


def load(engine: str, name: str) -> Any:
    return json.loads((FIXTURES / engine / name).read_text())


def test_all_engines_recorded() -> None:
    assert {"bookworm", "trixie", "trixie-containerd", "sid", "sid-containerd", "podman", "synthetic-1.52"} <= set(
        ENGINES
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_images_normalise(engine: str) -> None:
    raw = load(engine, "images.json")
    images = [apishapes.parse_image(r) for r in raw]
    assert len(images) == len(raw)
    assert all(i.id.startswith("sha256:") and len(i.short_id) == 12 for i in images)
    # `<none>:<none>` (before 1.43) and [] (1.43+) both mean dangling; never a "<none>" repository
    assert sum(i.dangling for i in images) == 1
    assert all(r.repository != "<none>" for i in images for r in i.refs)
    refs = {r for i in images for r in i.refs}
    assert ImageRef("127.0.0.1:5000/ns/app", "1") in refs  # registry host with port
    multi = [
        i for i in images if {r.tag for r in i.refs} >= {"1", "2"} and all("doomed" in r.repository for r in i.refs)
    ]
    assert len(multi) == 1  # one image, two tags
    assert all(i.size > 0 for i in images)  # Size, never the removed VirtualSize
    for r, i in zip(raw, images, strict=True):
        assert i.labels == (r.get("Labels") or {})  # null labels become empty
        if r.get("SharedSize", -1) == -1:
            assert i.shared_size is None  # -1 means "not computed", not zero


@pytest.mark.parametrize("engine", ENGINES)
def test_shared_size_query(engine: str) -> None:
    index = load(engine, "index.json")
    images = [apishapes.parse_image(r) for r in load(engine, "images-shared-size.json")]
    if index["api_version"] >= "1.42" and engine != "podman":
        assert all(i.shared_size is not None for i in images)
        assert any((i.shared_size or 0) > 0 for i in images)


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_identity(engine: str) -> None:
    info = apishapes.parse_engine_info(load(engine, "version.json"), load(engine, "info.json"), "x")
    assert info.containerd_store is engine.endswith("-containerd")
    assert info.podman is (engine == "podman")
    assert info.version and info.os == "linux"


@pytest.mark.parametrize("engine", ENGINES)
def test_disk_usage_matches_cli_formula(engine: str) -> None:
    raw = load(engine, "system-df.json")
    du = apishapes.parse_disk_usage(raw, 1.0)
    legacy = raw.get("Images") if "Images" in raw else raw["ImageUsage"]["Items"]
    layers = raw.get("LayersSize", raw.get("ImageUsage", {}).get("TotalSize"))
    assert du.layers_size == layers
    used = sum(i["Size"] - i["SharedSize"] for i in legacy if i["Containers"] > 0)
    assert du.reclaimable == max(layers - used, 0)
    assert {k for k in du.shared_sizes} <= {apishapes.normalize_id(i["Id"]) for i in legacy}
    assert du.build_cache is not None and du.build_cache.entries == len(
        raw.get("BuildCache") or raw.get("BuildCacheUsage", {}).get("Items") or []
    )


def test_synthetic_1_52_equals_its_1_51_source() -> None:
    old = apishapes.parse_disk_usage(load("sid", "system-df.json"), 1.0)
    new = apishapes.parse_disk_usage(load("synthetic-1.52", "system-df.json"), 1.0)
    assert (new.layers_size, new.reclaimable, new.build_cache) == (old.layers_size, old.reclaimable, old.build_cache)
    assert dict(new.shared_sizes) == dict(old.shared_sizes)


def test_summary_totals_win_without_items() -> None:
    du = apishapes.parse_disk_usage(
        {
            "ImageUsage": {"TotalSize": 900, "Reclaimable": 300},
            "BuildCacheUsage": {"TotalSize": 50, "Reclaimable": 20, "TotalCount": 4},
        },
        1.0,
    )
    assert (du.layers_size, du.reclaimable) == (900, 300)
    assert du.build_cache is not None and (du.build_cache.size, du.build_cache.entries) == (50, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05.123456789Z", 1767323045.123456),
        ("2026-01-02T03:04:05Z", 1767323045.0),
        ("2026-01-02T04:04:05+01:00", 1767323045.0),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_parse_time(text: str | None, expected: float | None) -> None:
    assert apishapes.parse_time(text) == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("engine", ENGINES)
def test_last_tag_time(engine: str) -> None:
    inspect = load(engine, "image-inspect.json")
    value = apishapes.parse_last_tag_time(inspect)
    raw = (inspect.get("Metadata") or {}).get("LastTagTime")
    assert (value is None) == (not raw or raw.startswith("0001-"))


def test_ref_parse_edge_cases() -> None:
    assert ImageRef.parse("localhost:5000/team/app") == ImageRef("localhost:5000/team/app", "latest")
    assert ImageRef.parse("app") == ImageRef("app", "latest")
    assert ImageRef.parse("<none>:<none>") is None
    assert ImageRef.parse("app@sha256:abc") is None


def test_podman_ids_get_the_prefix() -> None:
    assert apishapes.normalize_id("abc123") == "sha256:abc123"
    assert apishapes.normalize_id("sha256:abc123") == "sha256:abc123"


@pytest.mark.parametrize("engine", ENGINES)
def test_podman_shared_and_layer_sizes_are_unknown_not_zero(engine: str) -> None:
    info = apishapes.parse_engine_info(load(engine, "version.json"), load(engine, "info.json"), "1.41")
    images = apishapes.parse_images(load(engine, "images-shared-size.json"), info)
    du = apishapes.parse_disk_usage(load(engine, "system-df.json"), 1.0, info)
    if engine == "podman":
        assert load(engine, "system-df.json")["LayersSize"] == 0  # what Podman answers, although layers exist
        assert all(i.shared_size is None for i in images)
        assert (du.layers_size, du.reclaimable, dict(du.shared_sizes)) == (None, None, {})
        assert not apishapes.shared_sizes_known(info)
    else:
        assert images == [apishapes.parse_image(r) for r in load(engine, "images-shared-size.json")]
        assert du == apishapes.parse_disk_usage(load(engine, "system-df.json"), 1.0)
        assert du.layers_size
    assert apishapes.local_images_have_digests(info) is (engine == "podman" or engine.endswith("-containerd"))


def test_container_last_use_is_the_later_of_finished_and_started() -> None:
    zero = "0001-01-01T00:00:00Z"
    exited = {"State": {"StartedAt": "2026-11-28T10:00:00.5Z", "FinishedAt": "2026-11-28T11:00:00.123456789Z"}}
    assert apishapes.parse_container_last_use(exited) == apishapes.parse_time("2026-11-28T11:00:00.123456Z")
    running = {"State": {"StartedAt": "2026-11-28T10:00:00Z", "FinishedAt": zero}}
    assert apishapes.parse_container_last_use(running) == apishapes.parse_time("2026-11-28T10:00:00Z")
    assert apishapes.parse_container_last_use({"State": {"StartedAt": zero, "FinishedAt": zero}}) is None  # created
    assert apishapes.parse_container_last_use({}) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_a_hold_reference_is_never_a_tag(engine: str) -> None:
    """The executor's hold on an image about to go: listings and inspects show the image as it was."""
    hold = f"{apishapes.HOLD_REPOSITORY}/0123456789abcdef:0123456789ab"
    for raw in load(engine, "images.json"):
        before = apishapes.parse_image(raw)
        tags = [t for t in raw.get("RepoTags") or [] if "<none>" not in t]
        digests = [d for d in raw.get("RepoDigests") or [] if "<none>" not in d]
        derived = f"{apishapes.HOLD_REPOSITORY}/0123456789abcdef@sha256:{'0' * 64}"  # Podman, containerd store
        image = apishapes.parse_image({**raw, "RepoTags": [*tags, hold], "RepoDigests": [*digests, derived]})
        assert image.refs == before.refs and image.digests == before.digests and image.dangling == before.dangling
