"""Every path of a real exporter process reaches the one engine its address names, as the docker SDK reads it.

`unix://tmp/x.sock` (two slashes, the form the SDK's own docs use) is the socket `/tmp/x.sock` to the SDK.
The exporter opens the engine four ways: the SDK client (polls, events, prunes), the launch read
(`earlyread`, before the SDK is imported), and the lean unix-socket client (image inspects for LastTagTime
and the delete lane's checks and DELETEs). Two recording listeners stand in front of one private engine:
one at the absolute path, one at the same path below the exporter's working directory. A full run (start,
first poll, LastTagTime inspects, a deletion through the webhook API) must reach the absolute one only,
by every one of the four ways.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from pathlib import Path

import pytest

from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess
from tests.harness.fixtures import add_diagnostics
from tests.harness.state import write_saved_state
from tests.integration.test_webhook_engine import BEARER, config, image_ids, load_dangling

_REQUEST_HEAD = re.compile(rb"(GET|POST|DELETE|HEAD|PUT) (\S+) HTTP/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n")


class RecordingRelay:
    """A unix socket that relays every connection, both ways and byte for byte, to the engine's socket,
    keeping what each client sent, so a test can tell which requests reached it and from which client
    (the SDK sends a User-Agent; the launch read and the lean client send none)."""

    def __init__(self, path: Path, upstream: Path) -> None:
        self.path = path
        self.upstream = upstream
        self.sent: list[bytearray] = []  # per accepted connection: the client's bytes
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._server.bind(str(path))
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()

    def requests(self) -> list[tuple[str, str, str | None]]:
        """(method, target, User-Agent or None) of every request relayed, in each connection's order."""
        found = []
        for data in list(self.sent):
            for method, target, headers in _REQUEST_HEAD.findall(bytes(data)):
                agent = re.search(rb"(?im)^user-agent:\s*(.+?)\s*$", headers)
                found.append((method.decode(), target.decode(), agent.group(1).decode() if agent else None))
        return found

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.upstream))
            record = bytearray()
            self.sent.append(record)
            threading.Thread(target=_pump, args=(client, upstream, record), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client, None), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            if record is not None:
                record.extend(chunk)
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class ExporterWithoutHostFlag(ExporterProcess):
    """The exporter started without `--docker.host`: the address comes from the config or DOCKER_HOST."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--docker.host")
        return command[:at] + command[at + 2 :]


@pytest.mark.parametrize("source", ["--docker.host", "docker.host", "DOCKER_HOST"])
def test_unix_two_slash_address_reaches_the_absolute_socket_on_every_path(
    dockerd: PrivateDockerd, tmp_path: Path, source: str, request: pytest.FixtureRequest
) -> None:
    ids = load_dangling(dockerd, 1)
    write_saved_state(tmp_path / "state.json", dockerd)  # the image above was here before
    folder = short_workdir("die-addr-")
    absolute = folder / "e.sock"
    host = "unix://" + str(absolute).lstrip("/")  # unix://tmp/die-addr-…/e.sock
    settings = config(tmp_path)
    if source == "--docker.host":
        exp = ExporterProcess(folder / "cwd", host, settings)
    elif source == "docker.host":
        exp = ExporterWithoutHostFlag(folder / "cwd", "", {**settings, "docker": {"host": host}})
    else:
        exp = ExporterWithoutHostFlag(folder / "cwd", "", settings, env={"DOCKER_HOST": host})
    # the same path below the exporter's working directory: what a relative reading would open
    add_diagnostics(request.node, "exporter stderr", lambda: exp.logs(60))
    below_cwd = exp.workdir / str(absolute).lstrip("/")
    right = RecordingRelay(absolute, dockerd.socket)
    wrong = RecordingRelay(below_cwd, dockerd.socket)
    try:
        exp.start()
        exp.wait_ready()
        status, body = exp.request("POST", "/api/v1/actions/clean-dangling", headers=BEARER)
        assert status == 200, body
        answer = json.loads(body)
        assert answer["result"] == "success" and answer["images_deleted"] == 1, answer
        assert ids[0] not in image_ids(dockerd)
        assert exp.sample("docker_up") == 1

        assert wrong.requests() == [] and wrong.sent == [], wrong.requests()
        seen = right.requests()
        sdk = [(m, t) for m, t, agent in seen if agent and agent.startswith("docker-sdk-python")]
        raw = [(m, re.sub(r"^/v[0-9.]+", "", t)) for m, t, agent in seen if agent is None]
        assert ("GET", "/version") in sdk  # the SDK client negotiating its API version
        assert ("GET", "/version") in raw  # the launch read, before the SDK is imported
        assert any(m == "GET" and t.startswith("/images/json") for m, t in raw), raw  # ... and its listing
        assert any(m == "GET" and re.fullmatch(r"/images/[^/]+/json", t) for m, t in raw), raw  # lean inspects
        assert ("DELETE", f"/images/{ids[0]}?force=false&noprune=false") in raw  # the lean delete lane
        assert f"unix://{absolute} (given as {host})" in exp.get("/")  # the landing page says which socket
    finally:
        exp.stop()
        right.close()
        wrong.close()
        remove_workdir(folder)
