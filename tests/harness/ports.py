"""Loopback ports for the programs tests start, and proof that the program answering on one is ours.

CI runs three test jobs at once, each starting Prometheus, Alertmanager, registries and exporters. A port
picked with bind(0) comes from the ephemeral range, where every outgoing connection of every job also takes
its local port; between our pick and the program's own bind, another program can take it. A program that
then fails to bind leaves the port to somebody else, whose `/-/ready` answers 200 just the same (CI saw
Alertmanager's alerts posted to another job's Prometheus: 404). So ports are picked below the ephemeral
range, each reserved across processes (a lock file held while the pick is fresh) so two jobs never pick the
same one, and a start counts only when the listener on the port belongs to the process we started.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

#: Picked below Linux's default ephemeral range (32768-60999), where no outgoing connection takes a port.
_LOW, _HIGH = 20000, 32767
#: A pick's lock is held until this many newer picks: by then its program has bound it (or is gone).
_HOLD = 128
_LOCK_DIR = Path(tempfile.gettempdir()) / "die-ports"
_held: OrderedDict[int, int] = OrderedDict()  # port -> the fd holding its lock
_guard = threading.Lock()


def _reserve(port: int) -> bool:
    """Take `port`'s lock (non-blocking); False when this or another test process holds it."""
    if port in _held:
        return False
    _LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    fd = os.open(_LOCK_DIR / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[port] = fd
    while len(_held) > _HOLD:
        os.close(_held.popitem(last=False)[1])
    return True


def _release(port: int) -> None:
    fd = _held.pop(port, None)
    if fd is not None:
        os.close(fd)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port free right now, outside the ephemeral range when the host's range allows."""
    ephemeral = _ephemeral_range()
    with _guard:
        for _ in range(200):
            port = random.randint(_LOW, _HIGH)
            if ephemeral[0] <= port <= ephemeral[1] or not _reserve(port):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    _release(port)
                    continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a host whose ephemeral range covers ours
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (IPv4 or IPv6, any address), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _family(pid: int) -> list[int]:
    """`pid` and its descendants (a wrapper such as faketime may fork the program that listens)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    family, todo = [], [pid]
    while todo:
        current = todo.pop()
        family.append(current)
        todo.extend(children.get(current, ()))
    return family


def listener_owned_by(pid: int, port: int) -> bool:
    """Whether process `pid` (or a child of it) holds the socket listening on `port` (False when somebody
    else does, or nobody yet)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    for member in _family(pid):
        fd_dir = Path(f"/proc/{member}/fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False
