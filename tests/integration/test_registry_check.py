"""`remediation.registry_check` against real registries: Debian's `docker-registry` on loopback, one open and
two asking for credentials (htpasswd), images uploaded over the registry API.

The leak test is built so that a leak would show: registry B accepts the very credentials config.json holds
for registry A, so sending A's credentials to B would confirm B's image. It must stay unconfirmed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.config import RegistryCheckConfig, TrashConfig
from exporter.remediation.registrycheck import RegistryCheck, locate
from exporter.remediation.trash import Trash
from tests.harness.dockerd import short_workdir
from tests.harness.registry import PrivateRegistry
from tests.harness.requires import require_programs
from tests.unit.fake_engine import FakeEngine

pytestmark = pytest.mark.engine

ALICE = ("alice", "s3cret-for-a")


@pytest.fixture
def locked() -> Iterator[tuple[PrivateRegistry, PrivateRegistry]]:
    """Two registries that both accept alice's password."""
    require_programs("docker-registry")
    regs = [PrivateRegistry(short_workdir("die-regauth-"), users=dict([ALICE])) for _ in range(2)]
    try:
        for reg in regs:
            reg.start()
        yield regs[0], regs[1]
    finally:
        for reg in regs:
            reg.stop()


def docker_config(tmp_path: Path, auths: dict[str, tuple[str, str]]) -> str:
    path = tmp_path / "config.json"
    entries = {host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for host, (u, p) in auths.items()}
    path.write_text(json.dumps({"auths": entries}))
    return str(path)


def check(docker_config: str | None = None, cache_for: str = "1h") -> tuple[RegistryCheck, list[float]]:
    now = [1000.0]
    config = RegistryCheckConfig.model_validate({"docker_config": docker_config, "cache_for": cache_for})
    return RegistryCheck(config, clock=lambda: now[0]), now


async def test_an_open_registry_confirms_what_it_holds_and_answers_are_cached(registry: PrivateRegistry) -> None:
    digest = registry.put_image("app", "1")
    held = f"{registry.address}/app@{digest}"
    gone = f"{registry.address}/app@sha256:{'0' * 64}"
    rc, now = check()

    assert await rc.has_copy([held]) is True
    assert await rc.has_copy([gone]) is False
    assert rc.sent == [(registry.address, False), (registry.address, False)]
    assert await rc.has_copy([held]) is True and len(rc.sent) == 2  # cached: not asked again
    now[0] += 3601
    assert await rc.has_copy([gone, held]) is True and len(rc.sent) == 4  # expired: asked again


async def test_credentials_go_only_to_the_registry_they_are_for(
    locked: tuple[PrivateRegistry, PrivateRegistry], tmp_path: Path
) -> None:
    a, b = locked
    on_a = f"{a.address}/app@{a.put_image('app', '1')}"
    on_b = f"{b.address}/app@{b.put_image('app', '1')}"
    rc, _ = check(docker_config(tmp_path, {a.address: ALICE}))

    assert await rc.confirm(locate(on_a)) is True  # type: ignore[arg-type]
    assert rc.sent == [(a.address, False), (a.address, True)]  # anonymous first, then with A's credentials
    # B would accept alice's password: it must never see it, so its copy stays unconfirmed
    assert await rc.confirm(locate(on_b)) is None  # type: ignore[arg-type]
    assert await rc.has_copy([on_b]) is False
    assert [sent for host, sent in rc.sent if host == b.address] == [False, False]

    anonymous, _ = check()
    assert await anonymous.has_copy([on_a]) is False
    assert all(not sent for _host, sent in anonymous.sent)


async def test_with_a_registry_check_the_trash_skips_only_confirmed_copies(
    registry: PrivateRegistry, tmp_path: Path
) -> None:
    held = f"{registry.address}/app@{registry.put_image('app', '1')}"
    gone = f"{registry.address}/app@sha256:{'0' * 64}"
    rc, _ = check()
    trash = Trash(
        TrashConfig.model_validate({"path": str(tmp_path / "trash"), "max_bytes": "1GiB"}),
        FakeEngine(),
        digests_prove_copy=lambda: True,  # the classic store: a digest alone would count as a copy
        registry_check=rc,
    )
    assert await trash.needs_save({"RepoDigests": [held]}) is False
    assert await trash.needs_save({"RepoDigests": [gone]}) is True  # a digest the registry lost: saved
    assert await trash.needs_save({"RepoDigests": []}) is True
