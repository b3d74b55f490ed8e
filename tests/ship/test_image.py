"""The container image, built the way a user builds it offline, on a base with no pip, in a private engine.

A Debian bookworm root filesystem with only ``python3`` + ``python3-venv`` (``mmdebstrap --variant=minbase``,
cached per day) is ``docker import``-ed into a private dockerd; ``make image OFFLINE=1`` builds on it with
``--network none`` (the wheels are prepared on the host); the container then runs with the engine's socket
mounted and host networking, and must serve ``docker_up 1`` as a non-root user.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.ports import free_port
from tests.harness.requires import require_engine, require_programs

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "local/bookworm-python3:minbase"
IMAGE = "docker-image-exporter:ship-test"
#: Bookworm root filesystems, one per day (reruns reuse it; the next day fetches security updates).
CACHE_DIR = Path(os.environ.get("DIE_ROOTFS_CACHE", "/var/cache/docker-image-exporter-tests"))
#: Everything the image adds on top of its base (venv + deps) must stay below this.
MAX_ADDED_BYTES = 60 * 2**20


def bookworm_rootfs() -> Path:
    """A cached `mmdebstrap --variant=minbase --include=python3,python3-venv bookworm` tarball."""
    require_programs("mmdebstrap")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().strftime("%Y%m%d")
    tar = CACHE_DIR / f"bookworm-python3-minbase-{today}.tar"
    if tar.is_file():
        return tar
    partial = tar.with_suffix(".tar.partial")
    proc = subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--format=tar",
            "--include=python3,python3-venv",
            # docs, man pages and locales are dead weight in a container base
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "bookworm",
            str(partial),
        ],
        capture_output=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        pytest.fail(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')[-3000:]}")
    partial.rename(tar)
    for old in CACHE_DIR.glob("bookworm-python3-minbase-*.tar"):
        if old != tar and old.is_file():
            old.unlink()
    return tar


@dataclass
class Built:
    engine: PrivateDockerd
    build_log: str

    def inspect(self, ref: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.engine.cli("image", "inspect", ref).stdout)
        return data[0]


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    require_engine()
    require_programs("mmdebstrap", "make")
    engine = PrivateDockerd(short_workdir("die-img-"), name="image")
    try:
        engine.start(timeout=60)
        engine.cli("import", "--change", 'CMD ["python3"]', str(bookworm_rootfs()), BASE_IMAGE)
        env = dict(engine.env, DOCKER_HOST=engine.host, DOCKER_CONFIG=str(engine.cli_config))
        proc = subprocess.run(
            ["make", "--no-print-directory", "image", f"IMAGE={IMAGE}", f"BASE_IMAGE={BASE_IMAGE}", "OFFLINE=1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=900,
            check=False,
        )
        log = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, f"make image OFFLINE=1 failed:\n{log[-5000:]}"
        yield Built(engine, log)
    finally:
        engine.stop()
        mounts, procs = engine.leftovers()
        remove_workdir(engine.workdir)
        assert not mounts and not procs, f"engine left mounts {mounts} / processes {procs}"


@pytest.fixture(scope="module")
def running(built: Built) -> Iterator[tuple[str, int]]:
    """The image running like the docs say: socket mounted, socket's group added, data root read-only."""
    port = free_port()
    gid = built.engine.socket.stat().st_gid
    cid = (
        built.engine.cli(
            "run",
            "--detach",
            "--network",
            "host",
            "--group-add",
            str(gid),
            "--read-only",
            "--tmpfs",
            "/var/lib/docker-image-exporter:uid=10151,gid=10151",
            "--volume",
            f"{built.engine.socket}:/var/run/docker.sock",
            "--volume",
            f"{built.engine.data_root}:/var/lib/docker:ro",
            "--env",
            f"HEALTHCHECK_URL=http://127.0.0.1:{port}/-/healthy",
            IMAGE,
            "--config.file=/etc/docker-image-exporter/config.yaml",
            f"--web.listen-address=127.0.0.1:{port}",
        )
        .stdout.decode()
        .strip()
    )
    try:
        yield cid, port
    finally:
        built.engine.cli("rm", "--force", cid, check=False)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def _logs(built: Built, cid: str) -> str:
    proc = built.engine.cli("logs", "--tail", "60", cid, check=False)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def test_build_ran_offline_from_the_wheelhouse(built: Built) -> None:
    assert "network: --network none" in built.build_log, built.build_log[-2000:]
    assert re.search(r"wheelhouse for CPython 3\.11 \(cp311\)", built.build_log), built.build_log[-2000:]
    assert "Successfully tagged " + IMAGE in built.build_log or "naming to" in built.build_log


def test_container_serves_docker_up_as_non_root(built: Built, running: tuple[str, int]) -> None:
    cid, port = running
    deadline = time.monotonic() + 90
    body = ""
    while time.monotonic() < deadline:
        state = json.loads(built.engine.cli("inspect", cid).stdout)[0]["State"]
        assert state["Running"], f"container exited ({state['ExitCode']}):\n{_logs(built, cid)}"
        try:
            _, body = _get(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            body = ""
        if re.search(r"^docker_up 1(\.0)?$", body, re.M):
            break
        time.sleep(0.5)
    assert re.search(r"^docker_up 1(\.0)?$", body, re.M), f"no docker_up 1 in:\n{body[:2000]}\n{_logs(built, cid)}"
    # the images the engine holds are what the exporter counts (the base, the image, its build stage)
    assert re.search(r"^docker_images [1-9]", body, re.M), body[:2000]
    # not root: the configured user, what the process reports inside, and what the host kernel sees
    assert built.inspect(IMAGE)["Config"]["User"] == "10151:10151"
    assert built.engine.cli("exec", cid, "id", "-u").stdout.decode().strip() == "10151"
    pid = json.loads(built.engine.cli("inspect", cid).stdout)[0]["State"]["Pid"]
    uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert uids.split()[1:] == ["10151"] * 4


def test_healthcheck_command_passes(built: Built, running: tuple[str, int]) -> None:
    cid, port = running
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get(f"http://127.0.0.1:{port}/-/healthy")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    test = built.inspect(IMAGE)["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    ok = built.engine.cli("exec", cid, *test[1:], check=False)
    assert ok.returncode == 0, ok.stderr.decode(errors="replace")
    # and it really probes: pointed at a closed port it fails
    bad = built.engine.cli("exec", "--env", "HEALTHCHECK_URL=http://127.0.0.1:1/-/healthy", cid, *test[1:], check=False)
    assert bad.returncode != 0


def test_image_metadata(built: Built) -> None:
    config = built.inspect(IMAGE)["Config"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert labels["org.opencontainers.image.title"] == project["name"]
    # the revision in the label is the one baked into the package (setup.py, from the build-arg)
    version = built.engine.cli("run", "--rm", "--network", "none", IMAGE, "--version").stdout.decode()
    assert version.splitlines()[0] == (
        f"docker-image-exporter, version {project['version']} (revision: {labels['org.opencontainers.image.revision']})"
    )
    assert labels["org.opencontainers.image.revision"] != "unknown"
    assert config["Entrypoint"] == ["docker-image-exporter"]
    assert config["Cmd"] == ["--config.file=/etc/docker-image-exporter/config.yaml"]
    assert "10151/tcp" in config["ExposedPorts"]


def test_image_is_small_and_carries_no_build_tools(built: Built) -> None:
    added = built.inspect(IMAGE)["Size"] - built.inspect(BASE_IMAGE)["Size"]
    print(f"image adds {added / 2**20:.1f} MiB to its base")
    assert 0 < added < MAX_ADDED_BYTES
    probe = built.engine.cli(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/python", IMAGE,
        "-c", "import importlib.util as u; print(u.find_spec('pip') is None, u.find_spec('exporter') is not None)",
    )  # fmt: skip
    assert probe.stdout.decode().split() == ["True", "True"]


def test_offline_build_refuses_a_base_it_cannot_pull(built: Built) -> None:
    env = dict(built.engine.env, DOCKER_HOST=built.engine.host, DOCKER_CONFIG=str(built.engine.cli_config))
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), "die:never", "python:3.99-slim", "1"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert b"is not in the engine" in proc.stderr
