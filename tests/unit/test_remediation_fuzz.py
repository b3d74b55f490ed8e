"""Random requests against the webhook and the actions API: never a 5xx, and a refused request never starts
a run (issue 10). Bounded (max_examples=200) and without a daemon: the engine answers with payloads recorded
from a real dockerd, and the actions have nothing old enough to delete.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.remediation.runs import Run
from tests.unit.webhook_support import TOKEN, RecordedEngine, alert, app_factory_for

NOTHING_TO_DELETE = {"free-disk": {"type": "prune_dangling", "min_age": "3650d"}}
HEADER_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cc", "Cs")), max_size=40
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
ALERTS = st.one_of(
    st.builds(alert, status=st.sampled_from(["firing", "resolved"])),
    st.builds(
        lambda status, labels, fp: {"status": status, "labels": labels, "fingerprint": fp},
        st.sampled_from(["firing", "resolved", "burning"]) | JSON_VALUES,
        st.dictionaries(st.text(max_size=12), st.text(max_size=12) | JSON_VALUES, max_size=4),
        st.none() | st.text(max_size=16) | st.integers(),
    ),
    JSON_VALUES,
)
ENVELOPES = st.builds(
    lambda version, alerts, extra: json.dumps({**extra, "version": version, "alerts": alerts}).encode(),
    st.sampled_from(["4", "3", None]) | JSON_VALUES,
    st.lists(ALERTS, max_size=4) | JSON_VALUES,
    st.dictionaries(st.sampled_from(["status", "receiver", "groupKey", "externalURL"]), JSON_VALUES, max_size=3),
)
BODIES = st.one_of(st.none(), st.binary(max_size=512), ENVELOPES, JSON_VALUES.map(lambda v: json.dumps(v).encode()))
AUTHORIZATION = st.one_of(
    st.sampled_from(
        [
            f"Bearer {TOKEN}",
            "Basic " + base64.b64encode(b"am:pw").decode(),
            "Bearer wrong",
            "Basic !!!",
            "",
        ]
    ),
    HEADER_TEXT,
)
CONTENT_TYPES = (
    st.none()
    | st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/octet-stream",
        ]
    )
    | HEADER_TEXT
)
ENCODINGS = st.none() | st.sampled_from(["gzip", "deflate", "br", "identity", "zstd"]) | HEADER_TEXT
PARAMS = st.dictionaries(
    st.sampled_from(["dry_run", "dryrun", "token", "force"]) | st.text(min_size=1, max_size=8),
    st.sampled_from(["true", "false", "1", "maybe", ""]) | st.text(max_size=8),
    max_size=3,
)
ENDPOINTS = st.sampled_from(
    [
        ("POST", "/webhook/alertmanager"),
        ("POST", "/api/v1/actions/free-disk"),
        ("POST", "/api/v1/actions/nope"),
        ("GET", "/api/v1/actions"),
    ]
)


@pytest.fixture
async def fuzz_target(tmp_path: Path, aiohttp_client: Any) -> Any:
    client, service, _ = await app_factory_for(tmp_path, aiohttp_client)(RecordedEngine(), actions=NOTHING_TO_DELETE)
    await service.poller.poll_once()
    started: list[Run] = []
    begin = service.begin

    def recording_begin(*args: Any, **kwargs: Any) -> Run | None:
        run = begin(*args, **kwargs)
        if run is not None:
            started.append(run)
        return run

    service.begin = recording_begin  # type: ignore[method-assign]
    return client, service, started


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=ENDPOINTS,
    payload=BODIES,
    authorization=AUTHORIZATION,
    content_type=CONTENT_TYPES,
    encoding=ENCODINGS,
    origin=st.none() | st.just("own") | HEADER_TEXT,
    params=PARAMS,
)
async def test_random_requests_never_get_a_5xx_and_refusals_start_nothing(
    fuzz_target, endpoint, payload, authorization, content_type, encoding, origin, params
):
    client, service, started = fuzz_target
    method, path = endpoint
    headers = {"Authorization": authorization}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if origin is not None:
        headers["Origin"] = f"http://{client.server.host}:{client.server.port}" if origin == "own" else origin
    before = len(started)
    resp = await client.request(method, path, data=payload, headers=headers, params=params)
    await resp.read()
    assert resp.status < 500, (resp.status, await resp.text())
    if resp.status >= 400:
        assert len(started) == before, "a refused request started a run"
    assert service.poller.store.up
