"""Restore decisions that a real engine cannot show on demand: a digest that comes back as another image, a
registry that lost one of two digests, audit logs with cut lines; and reading a run's deletions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from exporter import cli
from exporter.engine.client import Engine, EngineNotFound, EngineUnavailable
from exporter.remediation.planner import Candidate, restore_hint
from exporter.remediation.restore import Deleted, RestoreError, deleted_images, restore_one, select

OLD = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
DIGEST = "reg.example/app@sha256:" + "c" * 64
LOST = "gone.example/app@sha256:" + "d" * 64


class Engine_:
    """Only what a restore asks: inspect by name, pull by digest, tag; records the writes."""

    def __init__(self, names: dict[str, str], pulls: dict[str, str | None]) -> None:
        self.names = dict(names)  # reference or ID -> image ID it names
        self.pulls = pulls  # repo@digest -> image ID it brings (None: the pull fails)
        self.writes: list[str] = []

    async def inspect_image(self, ref: str, **_: Any) -> dict[str, Any]:
        if ref not in self.names:
            raise EngineNotFound(f"no such image: {ref}", 404)
        return {"Id": self.names[ref]}

    async def pull_digest(self, repository: str, digest: str) -> None:
        ref = f"{repository}@{digest}"
        self.writes.append(f"pull {ref}")
        got = self.pulls.get(ref)
        if got is None:
            raise EngineUnavailable(f"pull {ref}: manifest unknown")
        self.names[ref] = self.names[got] = got

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        self.writes.append(f"tag {repository}:{tag}")
        self.names[f"{repository}:{tag}"] = image_id


def deleted(*digests: str, tags: tuple[str, ...] = ("reg.example/app:1",)) -> Deleted:
    return Deleted(OLD, tags, digests, 1.0e9, 1024)


async def test_without_a_repo_digest_nothing_is_pulled_and_the_answer_says_gone_for_good() -> None:
    engine = Engine_({}, {})
    done = await restore_one(cast(Engine, engine), deleted())
    assert done.result == "no_copy" and engine.writes == []
    assert "gone for good" in done.commands


async def test_a_digest_that_comes_back_as_another_image_moves_no_tag() -> None:
    engine = Engine_({}, {DIGEST: OTHER})
    done = await restore_one(cast(Engine, engine), deleted(DIGEST))
    assert done.result == "mismatch" and OTHER in done.detail
    assert engine.writes == [f"pull {DIGEST}"]


async def test_the_next_digest_is_tried_when_the_registry_lost_the_first() -> None:
    engine = Engine_({}, {LOST: None, DIGEST: OLD})
    done = await restore_one(cast(Engine, engine), deleted(LOST, DIGEST))
    assert done.result == "restored" and done.pulled == DIGEST
    assert engine.writes == [f"pull {LOST}", f"pull {DIGEST}", "tag reg.example/app:1"]


async def test_a_dry_run_pulls_nothing_and_names_the_tags_it_would_not_move() -> None:
    engine = Engine_({"reg.example/app:1": OTHER, OTHER: OTHER}, {DIGEST: OLD})
    done = await restore_one(cast(Engine, engine), deleted(DIGEST), dry_run=True)
    assert done.result == "would_restore" and done.conflicts == {"reg.example/app:1": OTHER}
    assert engine.writes == []


def write_log(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_a_runs_deletions_come_from_its_image_lines_the_last_line_per_image_winning(tmp_path: Path) -> None:
    base = {"event": "image", "run_id": "r1", "image_id": OLD, "size": 5, "created": 1.0}
    log = write_log(
        tmp_path / "audit.jsonl",
        [
            {**base, "result": "unknown", "tags": [], "repo_digests": []},
            '{"event": "image", "run_id": "r1", "cut by a full disk',
            {**base, "result": "deleted", "tags": ["reg.example/app:1"], "repo_digests": [DIGEST]},
            {**base, "run_id": "r2", "image_id": OTHER, "result": "deleted"},
            {**base, "image_id": OTHER, "result": "skipped"},
            # a line without `tags`: its tag references stand in
            {**base, "image_id": "sha256:" + "e" * 64, "result": "deleted", "references": ["x/y:2", DIGEST]},
        ],
    )
    found = {d.image_id: d for d in deleted_images(log, "r1")}
    assert set(found) == {OLD, "sha256:" + "e" * 64}
    assert found[OLD].repo_digests == (DIGEST,) and found[OLD].tags == ("reg.example/app:1",)
    assert found["sha256:" + "e" * 64].tags == ("x/y:2",)
    assert found["sha256:" + "e" * 64].repo_digests == (DIGEST,)
    with pytest.raises(RestoreError, match="run nope is not in the audit log"):
        deleted_images(log, "nope")
    with pytest.raises(RestoreError, match="cannot read audit log"):
        deleted_images(tmp_path / "missing.jsonl", "r1")


def test_an_image_is_chosen_by_its_id_or_a_prefix_of_at_least_12_characters() -> None:
    images = [deleted(DIGEST)]
    assert select(images, None) == images
    assert select(images, OLD) == images and select(images, "a" * 12) == images
    with pytest.raises(RestoreError, match="at least 12"):
        select(images, "aaaa")
    with pytest.raises(RestoreError, match="not among the images the run deleted"):
        select(images, "b" * 12)


def test_the_hint_gives_commands_to_paste_or_says_no_copy_is_known() -> None:
    assert restore_hint(OLD, [DIGEST], ["reg.example/app:1"]) == (
        f"docker pull {DIGEST} && docker tag {DIGEST} reg.example/app:1"
    )
    assert restore_hint(OLD, [], ["local/app:1"]).startswith("no copy known")


def test_a_plan_candidate_says_how_it_could_come_back() -> None:
    pulled = Candidate(OLD, ("reg.example/app:1",), 5, "unique", "old", True, ("reg.example/app:1",), (DIGEST,))
    built = Candidate(OTHER, ("local/app:1",), 5, "unique", "old", True, ("local/app:1",))
    assert pulled.to_json()["restore"] == f"docker pull {DIGEST} && docker tag {DIGEST} reg.example/app:1"
    assert built.to_json()["restore"].startswith("no copy known")


def test_the_cli_names_a_run_the_audit_log_does_not_hold_and_touches_no_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "audit.jsonl", [{"event": "run_start", "run_id": "r1"}])
    nowhere = f"unix://{tmp_path}/no.sock"
    assert cli.main(["restore", "--audit-log", str(log), "--run", "r2", "--docker.host", nowhere]) == 1
    assert "run r2 is not in the audit log" in capsys.readouterr().err
