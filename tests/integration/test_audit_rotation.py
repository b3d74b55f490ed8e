"""The audit log through a real logrotate in the middle of a run against a real engine, and SIGHUP.

The third `DELETE` of the run is held in tests/harness/faultproxy.py (its intent is on disk, the engine
has not seen it); Debian's logrotate rotates the log in its default `create` mode; then the `DELETE` goes
on and the run finishes. Every line of the run must be in the renamed file or the new one, each once,
intents before their outcomes, and what happened after the rotation in the new file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ProtectConfig, parse_config
from exporter.engine.client import Engine
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.audit import AuditLog
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import make_plan
from exporter.remediation.runs import Run
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller, read_filesystem
from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd, find_program, short_workdir
from tests.harness.exporter import ExporterProcess
from tests.harness.faultproxy import FaultProxy
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.requires import require_programs
from tests.unit.actions import action_of

# subject: the audit log under logrotate; the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]

IMAGES = 5


def rotate(log_path: Path, workdir: Path) -> None:
    """`logrotate --force` with logrotate's usual `create` mode, as a distribution's cron job runs it."""
    program = find_program("logrotate")
    assert program is not None
    conf = workdir / "logrotate.conf"
    conf.write_text(f"{log_path} {{\n  rotate 3\n  create 0640\n  compress\n  delaycompress\n}}\n")
    conf.chmod(0o644)  # logrotate ignores a config others can write
    state = workdir / "logrotate.state"
    done = subprocess.run(
        [program, "--force", "--state", str(state), str(conf)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


async def test_a_rotation_between_two_deletes_keeps_every_line_and_the_rest_goes_to_the_new_file(
    dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    require_programs("logrotate")
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    ids = load_images(
        dockerd,
        [
            ImageSpec(tags=[f"rotate/app:{n}"], layers=[Layer.random(16 * 1024, f"rotate-{n}")], created=old)
            for n in range(IMAGES)
        ],
    )
    audit_path = tmp_path / "audit.jsonl"
    with FaultProxy(dockerd.socket, short_workdir("die-rotate-") / "p.sock") as proxy:
        engine = Engine(proxy.host, timeout=60)
        registry = CollectorRegistry()
        log = AuditLog(str(audit_path))
        executor = Executor(engine, log, RemediationMetrics(registry, []), read_filesystem, in_flight=1)
        try:
            poller = Poller(
                engine, parse_config({"filesystem": {"path": str(tmp_path)}}), ImageHistory(None), PollMetrics(registry)
            )
            snapshot = await poller.poll_once()
            assert snapshot is not None, poller.store.last_error
            action = action_of("prune_unused", name="prune", min_age=0.0)
            plan = make_plan(snapshot, action, ProtectConfig(local_only=False), snapshot.taken_at)
            candidates = [c for c in plan.candidates if c.image_id in ids]
            assert len(candidates) == IMAGES
            plan = replace(plan, candidates=tuple(candidates), skipped=())
            third = candidates[2].image_id
            hold = proxy.hold("DELETE", f"^/images/{third}$")

            run = Run("prune", "prune_unused", "manual", False)
            running = asyncio.create_task(executor.execute(run, plan, action))
            assert await asyncio.to_thread(hold.arrived.wait, 60), "the third DELETE never came"
            before = read_audit(audit_path)
            await asyncio.to_thread(rotate, audit_path, tmp_path)
            hold.release()
            await asyncio.wait_for(running, 60)
        finally:
            log.close()
            engine.close()

    assert run.result == "success" and run.images_deleted == IMAGES, run.detail
    renamed, new = read_audit(tmp_path / "audit.jsonl.1"), read_audit(audit_path)
    assert renamed == before  # the rotation took every line written so far, and nothing came after it
    assert before[-1]["event"] == "intent" and before[-1]["image_id"] == third
    lines = renamed + new
    assert lines[0]["event"] == "run_start" and lines[-1]["event"] == "run_end"
    for image_id in ids:
        assert [r["event"] for r in lines if r.get("image_id") == image_id] == ["intent", "image"]
    assert [(r["event"], r.get("image_id")) for r in new[:1]] == [("image", third)]  # its outcome, after
    later = {c.image_id for c in candidates[3:]}
    assert {r["image_id"] for r in new if r["event"] == "intent"} == later
    assert new[-1]["event"] == "run_end"


def open_audit_files(exp: ExporterProcess) -> set[str]:
    """The audit log files the exporter process holds open."""
    targets = set()
    for fd in Path(f"/proc/{exp.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            targets.add(os.readlink(fd))
    return {t for t in targets if "audit.jsonl" in t}


def test_sighup_lets_go_of_a_rotated_audit_log_at_once(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    """Without a write to come, only SIGHUP makes the exporter close the renamed file (and open the new one)."""
    (tmp_path / "token").write_text("t0ken\n")
    audit = tmp_path / "audit.jsonl"
    config = {
        "state": {"path": str(tmp_path / "state.json")},
        "poll": {"interval": "10m"},
        "remediation": {
            "enabled": True,
            "auth": {"bearer_token_file": str(tmp_path / "token")},
            "audit_log": str(audit),
            "actions": {"clean-dangling": {"type": "prune_dangling"}},
        },
    }
    exp = exporter_factory(dockerd, config, ready=False)
    assert open_audit_files(exp) == {str(audit)}  # opened at start, to report a bad path at once
    audit.rename(tmp_path / "audit.jsonl.1")
    assert open_audit_files(exp) == {str(tmp_path / "audit.jsonl.1")}

    exp.signal(signal.SIGHUP)
    exp.wait_for(lambda: "configuration reloaded" in exp.logs(), timeout=20, what="the reload after SIGHUP")
    assert open_audit_files(exp) == {str(audit)} and audit.exists()
    assert "cannot reopen the audit log" not in exp.logs()
