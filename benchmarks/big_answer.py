"""Peak and kept memory of the exporter's listing read when the engine answers with a huge `/images/json`.

    .venv/bin/python -m benchmarks.big_answer [--megabytes 100] [--chunked] [--old DIR]

A fake engine (its own process, so its memory is not counted) serves `/version` and a listing of phantom
images of about `--megabytes` MB on a unix socket, chunked as Go frames a large answer or with a
Content-Length. A second process reads it through `Engine.list_images` (the SDK path every poll takes) and
reports its peak RSS, its RSS after the read failed or returned and everything was dropped, and after
`memory.release_free_memory`. `--old DIR` runs the client on another checkout's `exporter` package (e.g.
`git archive <commit> exporter | tar -x -C DIR`) to compare with the code before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENT = r"""
import asyncio, gc, json, sys, time
if len(sys.argv) > 2:  # another checkout's package first: drop the editable install's finder
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, sys.argv[2])
from exporter.core import memory
from exporter.engine.client import Engine

def status(key: str) -> float:
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

def rss() -> float:
    return status("VmRSS")

async def main() -> dict:
    engine = Engine("unix://" + sys.argv[1], timeout=120)
    base = rss()
    start = time.monotonic()
    try:
        images = await engine.list_images()
        outcome = f"read {len(images)} images"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:120]}"
    images = None
    seconds = time.monotonic() - start
    engine.close()
    await asyncio.sleep(0)  # the loop's handle that resumed this task holds the read's future until the next step
    gc.collect()
    after = rss()
    blocks = sys.getallocatedblocks()
    memory.release_free_memory()
    return {"exporter": memory.__file__, "outcome": outcome, "seconds": round(seconds, 2),
            "rss_before_mib": round(base, 1),
            "peak_rss_mib": round(status("VmHWM"), 1),
            "rss_after_mib": round(after, 1), "python_blocks_after": blocks, "rss_after_trim_mib": round(rss(), 1)}

print(json.dumps(asyncio.run(main())))
"""


def listing(megabytes: float) -> bytes:
    entry = '{"Id":"sha256:%064x","RepoTags":["phantom/p%d:1"],"RepoDigests":[],"Created":1700000000,"Size":1,"SharedSize":-1,"Labels":null,"Containers":-1,"ParentId":""}'
    count = int(megabytes * 1e6 / len(entry % (0, 0)))
    return ("[" + ",".join(entry % (i, i) for i in range(count)) + "]").encode()


def serve(path: str, body: bytes, chunked: bool) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while line := self.rfile.readline():
                target = line.split()[1].decode()
                while self.rfile.readline().strip():
                    pass
                answer = body if "/images/json" in target else json.dumps({"ApiVersion": "1.41"}).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                try:
                    if chunked:
                        self.wfile.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
                        for i in range(0, len(answer), 1 << 20):
                            part = answer[i : i + (1 << 20)]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.wfile.write(head + b"Content-Length: %d\r\n\r\n" % len(answer) + answer)
                except OSError:  # the client stopped reading at its limit
                    return

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--old", help="a directory holding another checkout's exporter package")
    args = parser.parse_args()
    body = listing(args.megabytes)
    with tempfile.TemporaryDirectory(prefix="big-answer-") as tmp:
        sock = str(Path(tmp) / "engine.sock")
        server = os.fork()
        if server == 0:  # the fake engine: its copy of the body stays out of the client's RSS
            serve(sock, body, args.chunked)
            time.sleep(600)
            os._exit(0)
        del body
        try:
            while not Path(sock).exists():
                time.sleep(0.05)
            command = [sys.executable, "-c", CLIENT, sock] + ([args.old] if args.old else [])
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            print(out.stdout.strip() or out.stderr[-2000:])
        finally:
            os.kill(server, signal.SIGTERM)
            os.waitpid(server, 0)


if __name__ == "__main__":
    main()
