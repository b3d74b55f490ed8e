"""The harness's ports: two test processes never pick the same one, and a start is ours only when we listen.

CI once posted Alertmanager's alerts to another job's Prometheus: Alertmanager had failed to bind the port
it was given, and the other program's `/-/ready` answered for it.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.harness import ports
from tests.harness.ports import free_port, listener_owned_by

HOLD_A_PICK = textwrap.dedent(
    """
    import sys
    from tests.harness.ports import free_port
    print(free_port(), flush=True)
    sys.stdin.read()  # keep the pick (and its lock) until the test lets go
    """
)

LISTEN = textwrap.dedent(
    """
    import socket, sys
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    print("listening", flush=True)
    sys.stdin.read()
    """
)


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],  # the repository, where `tests.harness` imports from
    )


def test_a_port_another_process_picked_is_not_picked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _child(HOLD_A_PICK)
    try:
        assert holder.stdout is not None
        taken = int(holder.stdout.readline())
        candidates = iter([taken, taken, taken])
        real = random.randint
        monkeypatch.setattr(random, "randint", lambda a, b: next(candidates, None) or real(a, b))
        port = free_port()
        assert port != taken  # not yet bound by anybody: only the other process's lock tells
        low, high = ports._ephemeral_range()
        assert not low <= port <= high
    finally:
        holder.communicate("")


def test_the_listener_is_told_apart_from_somebody_elses() -> None:
    port = free_port()
    assert not listener_owned_by(1, port)  # nobody listens yet
    listener = _child(LISTEN, str(port))
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        assert listener_owned_by(listener.pid, port)
        other = _child(LISTEN, "0")  # a live process with a listener of its own, on another port
        try:
            assert other.stdout is not None
            other.stdout.readline()
            assert not listener_owned_by(other.pid, port)
        finally:
            other.communicate("")
    finally:
        listener.communicate("")
    with socket.create_server(("127.0.0.1", port)):  # free again once its owner is gone
        pass
