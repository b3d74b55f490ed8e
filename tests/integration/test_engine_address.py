"""Every path of a real exporter process reaches the one engine its address names, as the docker SDK reads it.

`unix://tmp/x.sock` (two slashes, the form the SDK's own docs use) is the socket `/tmp/x.sock` to the SDK.
The exporter opens the engine four ways: the SDK client (polls, events, prunes), the launch read
(`earlyread`, before the SDK is imported), and the lean unix-socket client (image inspects for LastTagTime
and the delete lane's checks and DELETEs). Two recording listeners stand in front of one private engine:
one at the absolute path, one at the same path below the exporter's working directory. A full run (start,
first poll, LastTagTime inspects, a deletion through the webhook API) must reach the absolute one only,
by every one of the four ways. The same run with `unix:///abs` and with `tcp://` (a TCP listener relaying
to the engine: there every call is the SDK's), each from the flag, the config and DOCKER_HOST.
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

# subject: the client's reading of an engine address; the engine does not matter, so one engine (make test) is enough
pytestmark = pytest.mark.engine_agnostic

_REQUEST_HEAD = re.compile(rb"(GET|POST|DELETE|HEAD|PUT) (\S+) HTTP/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n")


class RecordingRelay:
    """A listener (a unix socket file, or TCP on 127.0.0.1 when `path` is None) that relays every connection,
    both ways and byte for byte, to the engine's socket, keeping what each client sent, so a test can tell
    which requests reached it and from which client (the SDK sends a User-Agent; the launch read and the
    lean client send none)."""

    def __init__(self, path: Path | None, upstream: Path) -> None:
        self.upstream = upstream
        self.sent: list[bytearray] = []  # per accepted connection: the client's bytes
        if path is None:
            self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._server.bind(("127.0.0.1", 0))
            self.address = f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        else:
            self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._server.bind(str(path))
            self.address = f"unix://{path}"
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
@pytest.mark.parametrize("form", ["unix://rel", "unix:///abs", "tcp://"])
def test_every_path_reaches_the_engine_the_address_names(
    dockerd: PrivateDockerd, tmp_path: Path, source: str, form: str, request: pytest.FixtureRequest
) -> None:
    """`unix://rel` is the two-slash form; the listener below the working directory is where a relative
    reading would go, for every form. Over tcp every call is the SDK's: no launch read, no lean client."""
    ids = load_dangling(dockerd, 1)
    write_saved_state(tmp_path / "state.json", dockerd)  # the image above was here before
    folder = short_workdir("die-addr-")
    absolute = folder / "e.sock"
    right = RecordingRelay(None if form == "tcp://" else absolute, dockerd.socket)
    host = {"unix://rel": "unix://" + str(absolute).lstrip("/"), "unix:///abs": f"unix://{absolute}"}.get(
        form, right.address
    )
    settings = config(tmp_path)
    if source == "--docker.host":
        exp = ExporterProcess(folder / "cwd", host, settings)
    elif source == "docker.host":
        exp = ExporterWithoutHostFlag(folder / "cwd", "", {**settings, "docker": {"host": host}})
    else:
        exp = ExporterWithoutHostFlag(folder / "cwd", "", settings, env={"DOCKER_HOST": host})
    add_diagnostics(request.node, "exporter stderr", lambda: exp.logs(60))
    # the same path below the exporter's working directory: what a relative reading would open
    wrong = RecordingRelay(exp.workdir / str(absolute).lstrip("/"), dockerd.socket)
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
        sdk = [(m, re.sub(r"^/v[0-9.]+", "", t)) for m, t, agent in seen if agent and "docker-sdk-python" in agent]
        raw = [(m, re.sub(r"^/v[0-9.]+", "", t)) for m, t, agent in seen if agent is None]
        assert ("GET", "/version") in sdk  # the SDK client negotiating its API version
        inspected = [(m, t) for m, t in (sdk if form == "tcp://" else raw) if re.fullmatch(r"/images/[^/]+/json", t)]
        deletes = [t for m, t in (sdk if form == "tcp://" else raw) if m == "DELETE"]
        # a dangling image's last DELETE is of its hold reference, added by a tag POST: both on the same path
        hold = f"docker-image-exporter.hold/{answer['run_id']}:{ids[0].removeprefix('sha256:')[:12]}"
        assert [t.split("?")[0] for t in deletes] == [f"/images/{hold}"]  # by the lean delete lane on unix
        tags = [t for m, t in (sdk if form == "tcp://" else raw) if m == "POST" and t.split("?")[0].endswith("/tag")]
        assert [t.split("?")[0] for t in tags] == [f"/images/{ids[0]}/tag"]
        if form == "tcp://":
            assert raw == []  # neither the launch read nor the lean client speaks tcp
            assert inspected, sdk
        else:
            assert ("GET", "/version") in raw  # the launch read, before the SDK is imported
            assert any(m == "GET" and t.startswith("/images/json") for m, t in raw), raw  # ... and its listing
            assert inspected, raw  # the lean client's inspects
        shown = right.address if form != "unix://rel" else f"unix://{absolute} (given as {host})"
        assert f"<code>{shown}</code>" in exp.get("/")  # the landing page says which engine
    finally:
        exp.stop()
        right.close()
        wrong.close()
        remove_workdir(folder)
