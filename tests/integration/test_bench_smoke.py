"""`make bench` end to end at 50 images, so the benchmark code cannot rot between the runs that matter.

No timing is asserted: only that every figure of the report was produced (a number, positive where it
must be), that it survives the JSON round trip, and that the image cache gives back the very same images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.imageset import ImageSet
from benchmarks.report import missing_figures
from benchmarks.run import PROFILES, run, write_results
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir

# subject: the benchmark harness; the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]


def test_smoke_profile_produces_every_figure(tmp_path: Path) -> None:
    report = run("smoke", [PROFILES["smoke"]], use_cache=False, cache_root=tmp_path / "cache")
    out = write_results(report, "smoke", tmp_path / "results")

    saved = json.loads(out.read_text())
    (result,) = saved["runs"]
    assert result["images"] == PROFILES["smoke"].count
    assert missing_figures(result) == []
    assert result["scrape"]["uncapped"]["series"] > PROFILES["smoke"].count  # every tag has its series
    assert result["deletion"]["images"] == PROFILES["smoke"].delete_count
    for window in ("first_poll", "uncapped_scrape"):
        profile = result["profile"][window]
        # 50 images are too quick to promise samples; the window must still have been recorded and parsed
        assert profile.get("skipped") or isinstance(profile["samples"], int), profile
    table = out.with_suffix(".md").read_text()
    assert "| - |" not in table, table  # the report shows "-" for a figure it could not render


def test_cached_data_root_restores_the_same_images(tmp_path: Path) -> None:
    images = ImageSet(5, cache_root=tmp_path)
    listed = []
    for source in ("docker load", "dataroot-cache"):
        workdir = short_workdir("die-bcache-")
        engine = PrivateDockerd(workdir, name="bookworm")
        try:
            info = images.prepare(engine)
            assert info["source"] == source
            listed.append(sorted((img["Id"], tuple(img["RepoTags"])) for img in engine.get_json("/images/json")))
        finally:
            engine.stop()
            remove_workdir(workdir)
    assert len(listed[0]) == 6  # five images and the probe
    assert listed[0] == listed[1]
    assert {spec.image_id for spec in images.specs()} == {image_id for image_id, _ in listed[0]}
