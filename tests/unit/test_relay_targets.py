"""Fleet mode's relay targets and answers (issue 10 #9): the bearer token only goes where configuration says,
and a peer's answer is read with a size limit and a timeout.

The "peers" are small aiohttp servers in the test: what matters is what they receive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.config import ConfigError, parse_config
from exporter.web.relay import MAX_ANSWER_BYTES
from tests.unit.webhook_support import BEARER, TOKEN, AppFactory, RecordedEngine, alert, app_factory_for, body

NOTHING_TO_DELETE = {"free-disk": {"type": "prune_dangling", "min_age": "3650d"}}
SELF = "node-1:10151"
Peer = tuple[TestServer, list[web.Request]]


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


@pytest.fixture
def peer(aiohttp_server: Any) -> Callable[..., Awaitable[Peer]]:
    """A stand-in peer exporter that records what it receives and answers with `answer()`."""

    async def make(answer: Callable[[], Awaitable[web.Response]] | None = None) -> Peer:
        received: list[web.Request] = []

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            received.append(request)
            if answer is not None:
                return await answer()
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_post("/webhook/alertmanager", handler)
        server: TestServer = await aiohttp_server(app)
        return server, received

    return make


def relay(**settings: Any) -> dict[str, Any]:
    return {"enabled": True, "self_names": [SELF], "timeout": "2s", **settings}


def foreign_alert(instance: str) -> bytes:
    return body(alert(instance=instance))


def test_relaying_without_peers_needs_an_explicit_host_regex():
    """The old default (any bare host:port) sent the bearer token wherever an alert's label pointed."""
    with pytest.raises(ConfigError) as info:
        parse_config({"remediation": {"relay": relay()}})
    assert info.value.problems == [
        "remediation.relay.host_regex: is required when relay is enabled without peers: "
        "the host label values to relay to"
    ]
    assert parse_config({"remediation": {"relay": relay(host_regex=r"node-[0-9]+:10151")}}).remediation.relay.enabled
    assert parse_config({"remediation": {"relay": relay(peers={"node-2": "http://10.0.0.2:10151/"})}})


@pytest.mark.parametrize(
    "settings",
    [{"host_regex": r"node-[0-9]+:10151"}, {"peers": {"node-2:10151": "http://10.0.0.2:10151/webhook/alertmanager"}}],
    ids=["host_regex", "peers"],
)
async def test_an_alert_naming_another_host_never_gets_the_token_there(app_factory, peer, settings):
    evil, received = await peer()
    client, service, _ = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE, relay=relay(**settings))
    await service.poller.poll_once()
    target = f"{evil.host}:{evil.port}"
    resp = await client.post("/webhook/alertmanager", data=foreign_alert(target), headers=BEARER)
    answer = await resp.json()
    assert received == []
    assert answer["relayed"] == [
        {"host": target, "url": "", "alerts": 1, "status": None, "error": f"no peer allowed for instance={target!r}"}
    ]
    assert resp.status == 502


async def test_a_configured_peer_gets_the_delivery_as_json_with_the_hop_header(app_factory, peer):
    good, received = await peer()
    url = f"http://{good.host}:{good.port}/webhook/alertmanager"
    client, service, _ = await app_factory(
        RecordedEngine(), actions=NOTHING_TO_DELETE, relay=relay(peers={"node-2": url})
    )
    await service.poller.poll_once()
    resp = await client.post("/webhook/alertmanager", data=foreign_alert("node-2"), headers=BEARER)
    assert resp.status == 200
    assert (await resp.json())["relayed"][0]["status"] == 200
    [request] = received
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Docker-Image-Exporter-Relayed-By"] == SELF


async def test_a_peer_answer_larger_than_the_limit_is_a_failed_relay(app_factory, peer):
    async def huge() -> web.Response:
        return web.Response(body=b"x" * (MAX_ANSWER_BYTES + 1))

    big, received = await peer(huge)
    url = f"http://{big.host}:{big.port}/webhook/alertmanager"
    client, service, _ = await app_factory(
        RecordedEngine(), actions=NOTHING_TO_DELETE, relay=relay(peers={"node-2": url})
    )
    await service.poller.poll_once()
    resp = await client.post("/webhook/alertmanager", data=foreign_alert("node-2"), headers=BEARER)
    assert len(received) == 1
    assert resp.status == 502
    [result] = (await resp.json())["relayed"]
    assert result["status"] is None and f"larger than {MAX_ANSWER_BYTES} bytes" in result["error"]


async def test_a_peer_that_never_answers_is_a_failed_relay_after_the_timeout(app_factory, peer):
    never = asyncio.Event()

    async def hang() -> web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    slow, received = await peer(hang)
    url = f"http://{slow.host}:{slow.port}/webhook/alertmanager"
    client, service, _ = await app_factory(
        RecordedEngine(), actions=NOTHING_TO_DELETE, relay=relay(peers={"node-2": url}, timeout="500ms")
    )
    await service.poller.poll_once()
    resp = await client.post("/webhook/alertmanager", data=foreign_alert("node-2"), headers=BEARER)
    assert resp.status == 502
    [result] = (await resp.json())["relayed"]
    assert result["status"] is None and "Timeout" in result["error"]
    assert len(received) == 1
