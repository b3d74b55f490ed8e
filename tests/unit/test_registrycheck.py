"""Where a repo digest points and whose credentials go there (exporter/remediation/registrycheck.py); the
requests themselves are tested against real registries in tests/integration/test_registry_check.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from exporter.remediation.registrycheck import DOCKER_HUB, Located, locate, read_credentials

DIGEST = "sha256:" + "a" * 64


def test_a_digest_names_its_registry_and_docker_hub_is_the_default() -> None:
    assert locate(f"127.0.0.1:5000/team/app@{DIGEST}") == Located("127.0.0.1:5000", "team/app", DIGEST)
    assert locate(f"registry.example.com/app@{DIGEST}") == Located("registry.example.com", "app", DIGEST)
    assert locate(f"localhost/app@{DIGEST}") == Located("localhost", "app", DIGEST)
    assert locate(f"nginx@{DIGEST}") == Located(DOCKER_HUB, "library/nginx", DIGEST)
    assert locate(f"team/app@{DIGEST}") == Located(DOCKER_HUB, "team/app", DIGEST)
    assert locate("app:1") is None


def test_credentials_are_keyed_by_the_exact_registry_host(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
                    "127.0.0.1:5000": {"username": "alice", "password": "a"},
                    "https://registry.example.com": {"auth": base64.b64encode(b"bob:b").decode()},
                    "empty.example.com": {},
                }
            }
        )
    )
    assert read_credentials(str(path)) == {
        DOCKER_HUB: ("hub", "pw:with:colons"),
        "127.0.0.1:5000": ("alice", "a"),
        "registry.example.com": ("bob", "b"),
    }
    assert read_credentials(None) == {}
