"""The harness proves itself: every engine-backed test builds on these facts being true."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import docker
import pytest

from tests.harness.dockerd import (
    LoopFilesystem,
    PrivateDockerd,
    mounts_under,
    pids_in_cgroups_of,
    processes_referencing,
    remove_workdir,
    short_workdir,
)
from tests.harness.exporter import find_sample
from tests.harness.fixtures import NOWHERE, EngineFactory, ExporterFactory, LoopFactory
from tests.harness.images import (
    MIB,
    ImageSpec,
    Layer,
    LoadedScenario,
    host_arch,
    load_images,
    make_dangling,
    tiny_images,
    write_save_tar,
)
from tests.harness.registry import PrivateRegistry
from tests.harness.requires import require_engine

REPO_ROOT = Path(__file__).resolve().parents[2]


def _human(size: int) -> str:
    """docker CLI's size format (go-units HumanSize: decimal units, 4 significant digits)."""
    value, units = float(size), ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.4g}{units[i]}"


def _chain_sizes(specs: list[ImageSpec]) -> dict[tuple[str, ...], int]:
    """Layer chains (diff-id prefixes) -> layer size: layers are shared by chain, not by content alone."""
    chains: dict[tuple[str, ...], int] = {}
    for spec in specs:
        ids = [layer.diff_id for layer in spec.layers]
        for i, layer in enumerate(spec.layers):
            chains[tuple(ids[: i + 1])] = layer.size
    return chains


# --------------------------------------------------------------------------------------------- no engine


def test_tests_can_never_reach_a_default_engine() -> None:
    assert os.environ["DOCKER_HOST"] == NOWHERE
    for var in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        assert var not in os.environ
    with pytest.raises(docker.errors.DockerException):
        docker.from_env(timeout=2).ping()


def test_socket_path_length_is_checked() -> None:
    with pytest.raises(ValueError, match="longer than 107"):
        PrivateDockerd(Path("/tmp") / ("x" * 100))


def test_image_ids_are_predictable_and_layers_deterministic(tmp_path: Path) -> None:
    a = Layer.random(1000, "seed")
    assert a.size == 1000 and a.diff_id == Layer.random(1000, "seed").diff_id
    assert a.diff_id != Layer.random(1000, "other").diff_id
    spec = ImageSpec(tags=["x:1"], layers=[a], created=datetime.fromisoformat("2024-01-02T03:04:05+00:00"))
    assert spec.image_id == ImageSpec(tags=["y:2"], layers=[a], created=spec.created).image_id  # tags: not config
    with pytest.raises(ValueError, match="same image"):
        write_save_tar([spec, ImageSpec(tags=["y:2"], layers=[a], created=spec.created)], tmp_path / "t.tar")


def test_ci_turns_skips_into_failures(tmp_path: Path) -> None:
    """The rule behind every engine test: a skip under CI=true is a failure."""
    (tmp_path / "test_skips.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_skipped():
                pytest.skip("no engine here")

            @pytest.mark.xfail(reason="expected")
            def test_xfail():
                raise AssertionError
            """
        )
    )
    base = [sys.executable, "-m", "pytest", "-p", "tests.harness.fixtures", "-q", "-p", "no:cacheprovider"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    args = [*base, "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_skips.py")]
    local = subprocess.run(args, env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped, 1 xfailed" in local.stdout
    ci = subprocess.run(args, env={**env, "CI": "true"}, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "skipped under CI=true" in ci.stdout and "1 failed, 1 xfailed" in ci.stdout


def test_exposition_helpers() -> None:
    text = 'a_total{x="1"} 3\n# TYPE b gauge\nb{x="1",y="2"} 4.5\nb{x="2"} 7\n'
    assert find_sample(text, "b", {"x": "2"}) == 7
    assert find_sample(text, "b", {"y": "2"}) == 4.5
    assert find_sample(text, "b", {"x": "3"}) is None


# --------------------------------------------------------------------------------------------- engine


@pytest.mark.engine
@pytest.mark.parametrize("own_containerd", [False, True], ids=["supervised-containerd", "own-containerd"])
def test_engine_starts_and_stops_without_leftovers(own_containerd: bool) -> None:
    require_engine()
    workdir = short_workdir()
    engine = PrivateDockerd(workdir, own_containerd=own_containerd)
    try:
        with engine:
            assert engine.ping()
            assert engine.api_version() == engine.client().version()["ApiVersion"]
            assert engine.cli("version", "--format", "{{.Server.APIVersion}}").stdout.decode().strip()
            assert processes_referencing(str(engine.exec_root)), "its containerd should run while it runs"
            load_images(engine, [ImageSpec(tags=["t:1"], layers=[Layer.text("f", "x")])])
            dockerd_pid = engine.pid
        assert dockerd_pid is not None and not Path(f"/proc/{dockerd_pid}").exists()
        assert engine.leftovers() == ([], [])
        assert not engine.socket.exists()
        assert not engine.ping()
    finally:
        engine.stop()
        remove_workdir(workdir)


@pytest.mark.skipif(host_arch() != "amd64", reason="the pause binary is x86_64 only")
def test_kill_with_running_container_then_restart_and_stop_cleans_up(dockerd: PrivateDockerd) -> None:
    """A crash leaves shims, the container process, overlay and netns mounts; start/stop must cope."""
    load_images(dockerd, [ImageSpec(tags=["pause:1"], layers=[Layer.pause()], cmd=["/pause"])])
    cid = dockerd.cli("run", "-d", "--network", "none", "pause:1").stdout.decode().strip()
    assert dockerd.client().containers.get(cid).status == "running"
    dockerd.kill()
    assert not dockerd.ping()
    mounts, _ = dockerd.leftovers()
    assert any("/overlay2/" in m for m in mounts) and any("/netns/" in m for m in mounts)
    assert pids_in_cgroups_of([cid]), "the container process outlives a killed engine"
    dockerd.start()
    assert not pids_in_cgroups_of([cid])
    assert dockerd.client().containers.get(cid).status != "running"  # restart does not resume it
    assert [t for img in dockerd.client().images.list() for t in img.tags] == ["pause:1"]
    # a running container at a graceful stop: dockerd stops it (PID 1 ignores SIGTERM: short stop timeout)
    assert dockerd.cli("run", "-d", "--network", "none", "--stop-timeout", "1", "pause:1").returncode == 0
    dockerd.stop(timeout=30)
    assert dockerd.leftovers() == ([], [])
    assert not any(Path(p, "docker", cid).exists() for p in Path("/sys/fs/cgroup").iterdir())


def test_loaded_images_have_the_predicted_facts(loaded_dockerd: LoadedScenario) -> None:
    engine = loaded_dockerd.engine
    for key, spec in loaded_dockerd.scenario.all_specs().items():
        image_id = loaded_dockerd.ids[key]
        assert image_id == spec.image_id, key
        got = engine.get_json(f"/images/{image_id}/json")
        dangling = key in ("dangling_old", "dangling_new", "batch_old")
        want_tags = [] if dangling else sorted(spec.tags)
        assert sorted(t for t in got["RepoTags"] or [] if t != "<none>:<none>") == want_tags, key
        assert got["Size"] == spec.size, key
        assert datetime.fromisoformat(got["Created"].replace("Z", "+00:00")) == spec.created, key
        assert (got["Config"]["Labels"] or {}) == dict(spec.labels), key
    web = loaded_dockerd.spec("web")
    assert web.size == 3 * MIB + 1 * MIB + 512 * 1024


def test_shared_layers_show_as_shared_size(loaded_dockerd: LoadedScenario) -> None:
    engine, specs = loaded_dockerd.engine, loaded_dockerd.scenario.all_specs()
    chains: dict[tuple[str, ...], set[str]] = {}
    for key, spec in specs.items():
        ids = [layer.diff_id for layer in spec.layers]
        for i in range(len(ids)):
            chains.setdefault(tuple(ids[: i + 1]), set()).add(key)
    df = engine.get_json("/system/df")
    by_id = {img["Id"]: img for img in df["Images"]}
    for key, spec in specs.items():
        ids = [layer.diff_id for layer in spec.layers]
        shared = sum(layer.size for i, layer in enumerate(spec.layers) if len(chains[tuple(ids[: i + 1])]) > 1)
        assert by_id[loaded_dockerd.ids[key]]["SharedSize"] == shared, key
    assert specs["web"].size - by_id[loaded_dockerd.ids["web"]]["SharedSize"] == 512 * 1024
    assert df["LayersSize"] == sum(_chain_sizes(list(specs.values())).values())
    # the CLI shows the same sharing to a human
    cli = engine.cli("system", "df", "-v").stdout.decode()
    web_row = next(line for line in cli.splitlines() if line.startswith("team/web ") and " 1.0 " in line)
    assert _human(4 * MIB) in web_row.split() and _human(512 * 1024) in web_row.split()


def test_dangling_images_are_dangling(loaded_dockerd: LoadedScenario) -> None:
    out = loaded_dockerd.engine.cli("images", "-q", "--no-trunc", "-f", "dangling=true").stdout.decode()
    assert set(out.split()) == {loaded_dockerd.ids[k] for k in ("dangling_old", "dangling_new", "batch_old")}


def test_stopped_container_pins_its_image(loaded_dockerd: LoadedScenario) -> None:
    engine = loaded_dockerd.engine
    container = engine.get_json(f"/containers/{loaded_dockerd.containers['worker-stopped']}/json")
    assert container["State"]["Status"] == "created" and container["Image"] == loaded_dockerd.ids["worker"]
    containers = {img["Id"]: img["Containers"] for img in engine.get_json("/system/df")["Images"]}
    assert containers[loaded_dockerd.ids["worker"]] == 1
    assert sum(containers.values()) == 1
    refused = engine.cli("rmi", "worker:latest", check=False)
    assert refused.returncode != 0 and b"container" in refused.stderr


def test_make_dangling_by_retagging(dockerd: PrivateDockerd) -> None:
    spec = ImageSpec(tags=["localhost:5000/team/app:1.0", "app:latest"], layers=[Layer.random(4096, "app")])
    old = make_dangling(dockerd, spec)
    assert old == spec.image_id
    out = dockerd.cli("images", "-q", "--no-trunc", "-f", "dangling=true").stdout.decode()
    assert out.split() == [old]
    new = dockerd.get_json("/images/localhost:5000/team/app:1.0/json")
    assert new["Id"] != old and sorted(new["RepoTags"]) == sorted(spec.tags)


def test_loop_filesystem_mounts_and_cleans_up() -> None:
    require_engine()  # root, and the same tools
    workdir = short_workdir("die-fs-")
    try:
        with LoopFilesystem(workdir, 64) as fs:
            assert [p for _, p in mounts_under([fs.mountpoint])] == [str(fs.mountpoint)]
            assert fs.loop_devices()
            assert 50 * MIB < fs.size_bytes() <= 64 * MIB
            before = fs.avail_bytes()
            (fs.mountpoint / "blob").write_bytes(os.urandom(8 * MIB))
            os.sync()
            assert before - fs.avail_bytes() >= 8 * MIB
        assert not mounts_under([workdir])
        assert not fs.image.exists()
    finally:
        remove_workdir(workdir)


def test_engine_on_a_loop_filesystem_fills_it(loop_fs_factory: LoopFactory, dockerd_factory: EngineFactory) -> None:
    fs = loop_fs_factory(200)
    engine = dockerd_factory(data_root=fs.mountpoint / "docker")
    before = fs.avail_bytes()
    load_images(engine, [ImageSpec(tags=["big:1"], layers=[Layer.random(40 * MIB, "big")])])
    os.sync()
    # the extracted layer (plus the temporary copy docker load makes) lands on this filesystem
    assert before - fs.avail_bytes() >= 40 * MIB
    assert os.statvfs(engine.data_root).f_blocks == fs.statvfs().f_blocks


def test_registry_push_then_pull_gives_repo_digests(dockerd: PrivateDockerd, registry: PrivateRegistry) -> None:
    ref = registry.ref("team/app:1.0")
    (image_id,) = load_images(dockerd, [ImageSpec(tags=[ref], layers=[Layer.random(256 * 1024, "pushed")])])
    assert not dockerd.get_json(f"/images/{image_id}/json")["RepoDigests"]
    dockerd.cli("push", ref)
    digests = dockerd.get_json(f"/images/{image_id}/json")["RepoDigests"]
    assert len(digests) == 1 and digests[0].startswith(f"{registry.address}/team/app@sha256:")
    dockerd.cli("rmi", ref)
    dockerd.cli("pull", ref)
    pulled = dockerd.get_json(f"/images/{ref}/json")
    assert pulled["Id"] == image_id and pulled["RepoDigests"] == digests


def test_loading_a_thousand_tiny_images(dockerd: PrivateDockerd) -> None:
    """Scale fixture for exporter tests; the time is printed for the record, never asserted."""
    specs = tiny_images(1000, shared=Layer.random(64 * 1024, "bulk-base"))
    assert len({s.image_id for s in specs}) == 1000
    started = time.perf_counter()
    ids = load_images(dockerd, specs)
    elapsed = time.perf_counter() - started
    print(f"\nloaded 1000 tiny images in {elapsed:.1f}s")
    listed = dockerd.get_json("/images/json")
    assert len(listed) == 1000
    assert {img["Id"] for img in listed} == set(ids) == {s.image_id for s in specs}


def test_exporter_process_against_a_private_engine(
    loaded_dockerd: LoadedScenario, exporter_factory: ExporterFactory
) -> None:
    """Light check of ExporterProcess itself (the exporter's own tests go deep)."""
    exp = exporter_factory(loaded_dockerd.engine, {"poll": {"interval": "10m"}})
    assert exp.sample("docker_up") == 1
    assert exp.wait_for(lambda: exp.sample("docker_images"), timeout=10) == len(
        loaded_dockerd.engine.get_json("/images/json")
    )
    assert exp.logs()
    assert exp.stop() is not None and not exp.running
