"""The CRI backend against a real containerd: every metric the CRI can know equals the runtime's own answer.

Expected values come from the CRI itself (ListImages, ImageStatus, ImageFsInfo asked here with the stubs,
not through the exporter's client), from `ctr` and from the generated images' specs; statvfs of the image
filesystem for the disk series. What the CRI cannot know (shared and unique sizes, layer disk usage,
reclaimable bytes, build cache, last tag time) must be absent, not zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from tests.harness.audit import read_audit
from tests.harness.containerd import SANDBOX_IMAGE, PrivateContainerd
from tests.harness.exporter import parse_samples
from tests.harness.fakecri import comparable, fixture_for, record, recorded_specs
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, scenario_basic
from tests.harness.registry import PrivateRegistry
from tests.integration.test_golden_exposition import FIXED_NOW, normalise

pytestmark = pytest.mark.cri

REPO = Path(__file__).resolve().parents[2]
CRI_GOLDEN = REPO / "tests" / "golden" / "metrics-cri-containerd.prom"
ABSENT_ON_CRI = (
    "docker_image_shared_size_bytes",
    "docker_image_unique_size_bytes",
    "docker_image_last_tag_timestamp_seconds",
    "docker_images_disk_usage_bytes",
    "docker_images_reclaimable_bytes",
    "docker_build_cache_size_bytes",
    "docker_build_cache_reclaimable_bytes",
    "docker_build_cache_entries",
)


def specs() -> list[ImageSpec]:
    base = Layer.random(200_000, "cri-base")
    old = datetime(2024, 3, 1, tzinfo=UTC)
    return [
        ImageSpec(
            tags=("team/web:1.0", "team/web:latest"),
            layers=(base, Layer.random(30_000, "web-1")),
            labels={"keep": "true"},
            created=old,
        ),
        ImageSpec(tags=("team/web:0.9",), layers=(base, Layer.random(20_000, "web-0.9")), created=old - timedelta(1)),
        ImageSpec(tags=("registry.example:5000/ns/api:2",), layers=(Layer.random(50_000, "api"),)),
    ]


def cri_answer(ctd: PrivateContainerd) -> tuple[list[pb.Image], dict[str, dict[str, object]], pb.ImageFsInfoResponse]:
    """ListImages, each image's verbose ImageStatus (as JSON) and ImageFsInfo, straight from the runtime."""
    with grpc.insecure_channel(ctd.endpoint) as channel:
        images = rpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]
        listed = list(images.ListImages(pb.ListImagesRequest(), timeout=10).images)
        status = {
            i.id: json.loads(
                images.ImageStatus(
                    pb.ImageStatusRequest(image=pb.ImageSpec(image=i.id), verbose=True), timeout=10
                ).info["info"]
            )
            for i in listed
        }
        fs = images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10)
    return listed, status, fs


def split(ref: str) -> tuple[str, str]:
    slash, colon = ref.rfind("/"), ref.rfind(":")
    return ref[:colon], ref[colon + 1 :] if colon > slash else "latest"


def test_every_metric_the_cri_knows_equals_the_runtimes_own_answer(
    containerd: PrivateContainerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    generated = specs()
    containerd.load(generated)
    exp = exporter_factory(containerd, {"state": {"path": str(tmp_path / "state.json")}})
    text = exp.metrics_text()
    samples = parse_samples(text)

    def values(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(lbl.items())): v for n, lbl, v in samples if n == name}

    listed, status, fs = cri_answer(containerd)
    by_id = {i.id: i for i in listed}  # containerd lists an image once per reference: one ID may come twice
    # the IDs are the images' config digests, as `ctr` names them too
    assert set(by_id) == {s.image_id for s in generated}
    assert {r for r in containerd.refs() if r.startswith("sha256:")} == set(by_id)
    assert values("docker_images")[()] == len(by_id)
    assert values("docker_images_size_bytes")[()] == sum(i.size for i in by_id.values())
    assert values("docker_up")[()] == 1

    expected_size, expected_created, expected_containers = {}, {}, {}
    for image_id, image in by_id.items():
        tags = {t for i in listed if i.id == image_id for t in i.repo_tags}
        created = datetime.fromisoformat(status[image_id]["imageSpec"]["created"].replace("Z", "+00:00"))  # type: ignore[index]
        for ref in tags:
            repository, tag = split(ref)
            key = (("image_id", image_id.removeprefix("sha256:")[:12]), ("repository", repository), ("tag", tag))
            expected_size[key] = float(image.size)
            expected_created[key] = created.timestamp()
            expected_containers[key] = 0.0
    assert values("docker_image_size_bytes") == expected_size
    assert values("docker_image_created_timestamp_seconds") == expected_created
    assert values("docker_image_containers") == expected_containers
    # the specs' own created times: the CRI's verbose status carries the OCI config exactly
    assert sorted(expected_created.values())[0] == (datetime(2024, 3, 1, tzinfo=UTC) - timedelta(1)).timestamp()
    repos = {split(t)[0] for i in listed for t in i.repo_tags}
    assert set(dict(k)["repository"] for k in values("docker_repository_images")) == repos
    assert values("docker_repository_tags")[(("repository", "docker.io/team/web"),)] == 3
    assert values("docker_images_dangling")[()] == 0
    # imported, never pulled: no repo digest, so every image exists only here
    assert all(not i.repo_digests for i in listed)
    assert values("docker_images_local_only")[()] == len(by_id)

    # the image filesystem is ImageFsInfo's mountpoint, sized by statvfs
    mountpoint = fs.image_filesystems[0].fs_id.mountpoint
    assert mountpoint == str(containerd.image_fs)
    st = os.statvfs(mountpoint)
    assert values("docker_filesystem_size_bytes")[(("path", mountpoint),)] == st.f_blocks * st.f_frsize
    avail = values("docker_filesystem_avail_bytes")[(("path", mountpoint),)]
    assert abs(avail - st.f_bavail * st.f_frsize) < 256 << 20  # other tests write to the same disk meanwhile

    # which runtime answered, in the labels the dashboards already read
    (info,) = values("docker_engine_info")
    labels = dict(info)
    assert labels["runtime"] == "containerd"
    assert labels["version"] == containerd.version()
    assert labels["api_version"] == "v1"
    assert labels["storage_driver"] == "native"

    for name in ABSENT_ON_CRI:
        assert not values(name), f"{name} is unknown over the CRI and must be absent"


def test_an_image_removed_by_the_runtime_leaves_at_the_next_poll(
    containerd: PrivateContainerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    generated = specs()
    containerd.load(generated)
    exp = exporter_factory(containerd, {"state": {"path": str(tmp_path / "state.json")}, "poll": {"interval": "1s"}})
    assert exp.sample("docker_images") == 3
    gone = generated[2]
    containerd.ctr("images", "rm", "registry.example:5000/ns/api:2", gone.image_id)
    exp.wait_for(lambda: exp.sample("docker_images") == 2, timeout=15, what="the removal to show")
    assert not [s for s in exp.samples("docker_image_size_bytes") if s[0]["image_id"] == gone.short_id]


def test_docker_and_runtime_together_are_refused_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--docker.host",
            "unix:///nowhere.sock",
            "--runtime.endpoint",
            "unix:///x.sock",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "both a Docker engine (unix:///nowhere.sock) and a CRI runtime (unix:///x.sock) are set" in proc.stderr


def test_the_recorded_answers_are_the_real_runtimes(containerd: PrivateContainerd) -> None:
    """The fake runtime of the removal tests answers with this recording: it must be what containerd says."""
    containerd.load(recorded_specs())
    fresh = record(containerd.endpoint)
    fixture = fixture_for(containerd.version())
    if os.environ.get("DIE_RECORD_CRI") == "1":
        fixture.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
    assert comparable(fresh) == comparable(json.loads(fixture.read_text()))


TOKEN = "cri-token"
BEARER = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_a_disk_pressure_alert_frees_space_and_never_touches_the_sandbox_image(
    containerd: PrivateContainerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    """The full loop on a containerd node: Alertmanager's webhook, the free_space plan, the CRI protocol's
    checks, intent lines, RemoveImage; what is left is the sandbox image, as containerd itself says."""
    loaded = recorded_specs()
    containerd.load(loaded)
    audit = tmp_path / "audit.jsonl"
    config = {
        "state": {"path": str(tmp_path / "state.json")},
        "poll": {"interval": "1s"},
        "remediation": {
            "enabled": True,
            "dry_run": False,
            "auth": {"bearer_token": TOKEN},
            "audit_log": str(audit),
            # an unreachable goal: every image the rules let go must go
            "actions": {"free-disk": {"type": "free_space", "target_avail_ratio": 0.999, "min_age": "1s"}},
            "routes": [{"matchers": ['remediation="free-disk"'], "action": "free-disk", "cooldown": "10m"}],
        },
    }
    exp = exporter_factory(containerd, config)
    time.sleep(1.5)  # min_age counts from the exporter's first sight of the images
    alert = {
        "status": "firing",
        "labels": {"alertname": "DockerDiskPressure", "remediation": "free-disk", "instance": "node-1"},
        "annotations": {},
        "startsAt": "2024-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "0123456789abcdef",
    }
    body = json.dumps({"version": "4", "status": "firing", "receiver": "r", "groupKey": "{}", "alerts": [alert]})
    status, answer = exp.request("POST", "/webhook/alertmanager", body.encode(), headers=BEARER)
    assert status in (200, 202), answer

    def finished() -> list[dict[str, Any]]:
        records = read_audit(audit) if audit.exists() else []
        return records if any(r.get("event") == "run_end" for r in records) else []

    records = exp.wait_for(finished, timeout=60, what="the run to end")
    sandbox = next(s for s in loaded if SANDBOX_IMAGE in s.tags)
    # containerd's own answer: only the sandbox image is left
    assert {r for r in containerd.refs() if r.startswith("sha256:")} == {sandbox.image_id}
    assert containerd.refs() == sorted([sandbox.image_id, SANDBOX_IMAGE])
    images = [r for r in records if r.get("event") in ("intent", "image")]
    for spec in loaded:
        events = [r["event"] for r in images if r.get("image_id") == spec.image_id]
        if spec is sandbox:
            assert events == ["image"]
            (kept,) = [r for r in images if r.get("image_id") == spec.image_id]
            # containerd 1.7.3+ reports its sandbox image pinned (kept as pinned); 1.6 does not (kept as sandbox)
            assert kept["result"] == "skipped", kept
            assert (kept["skip_reason"], "sandbox" in kept["detail"] or "pinned" in kept["detail"]) in (
                ("protected_reference", True),
                ("protected_label", True),
            ), kept
        else:
            assert events == ["intent", "image"], (spec.tags, events)  # the intent line first
            (done,) = [r for r in images if r.get("image_id") == spec.image_id and r["event"] == "image"]
            assert done["result"] == "deleted", done
    exp.wait_for(lambda: exp.sample("docker_images") == 1, timeout=15, what="the next poll to show it")


def test_a_removed_image_is_restored_by_digest_and_tag(
    registry: PrivateRegistry, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    """Restore over the CRI: the run's audit lines name the repo digest; the restore pulls it through the CRI's
    PullImage and brings the tag back by pulling it (checked to name the same image)."""
    containerd = PrivateContainerd(plain_http=[registry.address])
    try:
        containerd.start()
        ref = registry.ref("team/web:1")
        (spec,) = [ImageSpec(tags=(ref,), layers=(Layer.random(40_000, "restore-me"),))]
        containerd.load([spec])
        containerd.ctr("images", "push", "--plain-http", ref)
        containerd.ctr("images", "rm", ref, spec.image_id)
        with grpc.insecure_channel(containerd.endpoint) as channel:  # as kubelet gets it: pulled over the CRI
            images = rpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]
            images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)
            (listed,) = images.ListImages(pb.ListImagesRequest(), timeout=10).images
        assert listed.id == spec.image_id and listed.repo_digests
        audit = tmp_path / "audit.jsonl"
        config = {
            "state": {"path": str(tmp_path / "state.json")},
            "remediation": {
                "enabled": True,
                "dry_run": False,
                "auth": {"bearer_token": TOKEN},
                "audit_log": str(audit),
                "actions": {"unused": {"type": "prune_unused", "min_age": "1s"}},
                "routes": [{"matchers": ['remediation="unused"'], "action": "unused", "cooldown": "10m"}],
            },
        }
        exp = exporter_factory(containerd, config)
        time.sleep(1.5)
        status, answer = exp.request("POST", "/api/v1/actions/unused", b"", headers=BEARER)
        assert status in (200, 202), answer
        records = exp.wait_for(
            lambda: [r for r in read_audit(audit) if r.get("event") == "run_end"] and read_audit(audit), timeout=60
        )
        (deleted,) = [r for r in records if r.get("event") == "image" and r["result"] == "deleted"]
        assert deleted["image_id"] == spec.image_id
        assert containerd.refs() == []
        run_id = deleted["run_id"]
        status, answer = exp.request("POST", f"/api/v1/runs/{run_id}/restore", b"", headers=BEARER)
        assert status == 200, answer
        # the CLI over the CRI, dry run: the image is back, only its tag would be re-created
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "exporter",
                "restore",
                "--audit-log",
                str(audit),
                "--run",
                run_id,
                "--dry-run",
                "--runtime.endpoint",
                containerd.endpoint,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        (result,) = json.loads(answer)["images"]
        assert result["result"] == "restored", result
        assert result["tagged"] == [ref] and result["pulled"].startswith(f"{registry.address}/team/web@sha256:"), result
        assert spec.image_id in containerd.refs() and ref in containerd.refs()
        assert cli.returncode == 0, cli.stderr
        (line,) = [json.loads(x) for x in cli.stdout.splitlines()]
        assert line["image_id"] == spec.image_id and line["result"] == "would_restore", line
    finally:
        containerd.remove()


def test_exposition_matches_the_cri_golden_file(
    containerd: PrivateContainerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    """The golden-file check's CRI leg: the same scenario (images, then successors taking some tags, leaving
    the old images dangling), no containers (none can run here). `UPDATE_GOLDEN=1` rewrites it."""
    scenario = scenario_basic(now=FIXED_NOW)
    containerd.load([s for s in scenario.images.values() if s.tags])
    containerd.load(list(scenario.successors.values()))
    exp = exporter_factory(containerd, {"poll": {"interval": "10m"}, "state": {"path": str(tmp_path / "s.json")}})
    actual = normalise(exp.metrics_text())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        CRI_GOLDEN.write_text(actual)
    assert CRI_GOLDEN.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert actual == CRI_GOLDEN.read_text(), "exposition changed: review, then UPDATE_GOLDEN=1 to accept"
