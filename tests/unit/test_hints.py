"""Engine error hints, fed with the error texts the poller really records (copied from its log)."""

from __future__ import annotations

import pytest

from exporter.engine.hints import engine_error_hint
from exporter.web.landing import render_landing

MISSING = (
    "info: DockerException: Error while fetching server API version: ('Connection aborted.', "
    "FileNotFoundError(2, 'No such file or directory'))"
)
DENIED = (
    "info: DockerException: Error while fetching server API version: ('Connection aborted.', "
    "PermissionError(13, 'Permission denied'))"
)
REFUSED = (
    "info: DockerException: Error while fetching server API version: HTTPConnectionPool(host='127.0.0.1', "
    "port=2375): Max retries exceeded with url: /version (Caused by NewConnectionError('<urllib3.connection."
    "HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused'))"
)
OLD_SDK = "info: DockerException: Error while fetching server API version: Not supported URL scheme http+docker"


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (MISSING, "is the engine running? check --docker.host"),
        (DENIED, "add the user to the docker group, or run with the socket's group"),
        (REFUSED, "is the engine running? check --docker.host"),
        (OLD_SDK, "pip install 'docker>=7.1'"),
        ("images: engine did not answer within 35s", "raise docker.timeout"),
    ],
)
def test_known_errors_get_advice(error: str, advice: str) -> None:
    hint = engine_error_hint(error)
    assert hint is not None and advice in hint


def test_unknown_errors_get_none() -> None:
    assert engine_error_hint("images: APIError: 500 Server Error: Internal Server Error") is None


def test_landing_page_shows_the_hint_under_the_error() -> None:
    page = render_landing(
        telemetry_path="/metrics", up=False, snapshot=None, last_error=DENIED, remediation=False, docker_host="x"
    )
    assert "Permission denied" in page
    assert "<th>What to do</th><td>the exporter&#x27;s user may not open the engine&#x27;s socket" in page
    healthy = render_landing(
        telemetry_path="/metrics", up=True, snapshot=None, last_error=None, remediation=False, docker_host="x"
    )
    assert "What to do" not in healthy
