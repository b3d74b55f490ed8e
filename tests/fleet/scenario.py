"""`make test-fleet`: FLEET_HOSTS (default 50) exporters, each on its own private engine and loop-filesystem
data root, scraped every second by one Prometheus with the project's rules, alerting through two clustered
Alertmanager replicas; half the hosts' alerts go to their own exporter, the other half through the relay.

Disk pressure on FLEET_PRESSED random hosts (default 10); meanwhile one Alertmanager replica is SIGKILLed
right after its first notification, a relay entry's exporter is restarted and one engine is stopped. Every pressed host must be
remediated exactly once (audit log and run counters), no other host may run anything, and the fleet
dashboard queries, run against the real Prometheus, must show the pressed hosts and the dead engine.

Control: FLEET_COOLDOWN=0s (the route's cooldown off) must make this test fail: the late duplicates (from
the survivor replica, from the second relay entry) then run the action a second time.

The sizing numbers (series per host, scrape cost, Prometheus memory per host, time from pressure to freed
disk) are printed and written to benchmarks/results/fleet-<hosts>-<date>.json.

Not collected by `make test`/`make pytest` (the file name does not match test_*.py); run it with
`make test-fleet` or `pytest tests/fleet/scenario.py`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts.recording import render_recording_rules
from alerts.render import DEFAULT_THRESHOLDS, render_rules
from tests.fleet.fleet import (
    JOB_DEFAULT,
    JOB_LEAN,
    TOKEN,
    ClusteredAlertmanager,
    FleetPrometheus,
    Host,
    alertmanager_config,
    build_hosts,
    env_int,
    proc_cpu_seconds,
    proc_rss_bytes,
    teardown_hosts,
    wait_until,
)
from tests.harness.dashboard_queries import all_queries, substitute_variables
from tests.harness.dockerd import processes_referencing, remove_workdir, short_workdir
from tests.harness.exporter import parse_samples
from tests.harness.requires import require_engine, require_programs

pytestmark = [pytest.mark.engine, pytest.mark.e2e, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
WARN_USED = 1 - float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
#: Steady-state window over which scrape cost and Prometheus memory are measured.
STEADY_SECONDS = env_int("FLEET_STEADY_SECONDS", 60)
#: Alertmanager's default --cluster.peer-timeout: how long the second replica waits before it sends what
#: the first has not (by the notification log it gossips).
PEER_TIMEOUT = 15


def fleet_query(title: str) -> str:
    """The dashboard query of panel `title`, with $job matching both fleet jobs and every instance."""
    exprs = [expr for _, panel, expr in all_queries() if panel == title]
    assert exprs, f"no dashboard panel {title!r}"
    expr = substitute_variables(exprs[0], "JOBX", "INSTX")
    return expr.replace("JOBX", "docker-image-exporter.*").replace("INSTX", ".*")


def instances(result: list[dict[str, Any]], above: float = -math.inf) -> set[str]:
    return {r["metric"]["instance"] for r in result if float(r["value"][1]) > above}


class PressureWatch(threading.Thread):
    """While the fleet is under pressure: when each pressed host's disk is freed (statvfs of its loop
    filesystem), and which hosts the dashboard's "Top hosts by data-root use" shows in warning colours."""

    def __init__(self, prom: FleetPrometheus, pressed: list[Host]) -> None:
        super().__init__(daemon=True)
        self.prom, self.pressed = prom, pressed
        self.pressed_at: dict[str, float] = {}
        self.freed_at: dict[str, float] = {}
        self.seen_in_warning: dict[str, float] = {}
        #: the most hosts the fleet recording rule counted under disk pressure at once
        self.most_under_pressure = 0.0
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.use_query = fleet_query("Top hosts by data-root use")

    def run(self) -> None:
        while not self.stop_event.is_set():
            now = time.time()
            for host in self.pressed:
                if host.name not in self.freed_at and host.avail_ratio() >= 0.95 * 0.30:
                    self.freed_at[host.name] = now
            try:
                for inst in instances(self.prom.query(self.use_query), above=WARN_USED):
                    self.seen_in_warning.setdefault(inst, now)
                counted = self.prom.scalar("sum(job:docker_hosts_under_disk_pressure:count)")
                self.most_under_pressure = max(self.most_under_pressure, counted)
            except Exception as exc:
                self.errors.append(repr(exc))
            self.stop_event.wait(0.5)


def webhook_notifications(am: ClusteredAlertmanager) -> float:
    """Webhook notifications this replica has sent (its own /metrics)."""
    return sum(
        v
        for n, lbl, v in parse_samples(am.metrics_text())
        if n == "alertmanager_notifications_total" and lbl.get("integration") == "webhook"
    )


def exporter_cpu(hosts: list[Host]) -> float:
    total = 0.0
    for h in hosts:
        if h.exporter.pid is not None:
            with contextlib.suppress(OSError):
                total += proc_cpu_seconds(h.exporter.pid)
    return total


def test_fleet() -> None:
    require_engine()
    require_programs("prometheus", "prometheus-alertmanager", "mkfs.ext4", "losetup")
    count = env_int("FLEET_HOSTS", 50)
    assert count >= 6, "FLEET_HOSTS: at least 6 (two relay entries, one dead engine, pressed hosts, quiet ones)"
    pressed_count = env_int("FLEET_PRESSED", min(10, (count - 3) // 2))
    workers = env_int("FLEET_WORKERS", 4)
    seed = env_int("FLEET_SEED", int(time.time()))
    rng = random.Random(seed)
    report: dict[str, Any] = {"hosts": count, "pressed": pressed_count, "seed": seed, "workers": workers}
    print(f"\nfleet: {count} hosts, {pressed_count} pressed, seed {seed}")
    started = time.monotonic()

    stack = contextlib.ExitStack()
    hosts: list[Host] = []
    with stack:
        promdir = short_workdir("fl-prom-")
        stack.callback(remove_workdir, promdir)
        token_file = promdir / "token"
        token_file.write_text(TOKEN)

        # -- the hosts -------------------------------------------------------------------------------------
        hosts = build_hosts(count, workers)
        stack.callback(lambda: _teardown_and_check(hosts, workers))
        report["setup_seconds"] = round(time.monotonic() - started, 1)
        report["host_setup_seconds_median"] = round(statistics.median(h.setup_seconds for h in hosts), 1)
        print(f"fleet: {count} hosts up in {report['setup_seconds']} s")

        # Fault targets first, then the pressed hosts at random among the rest, half of them in each
        # routing half, so both paths (direct, relay) are proven every run.
        entries = hosts[:2]  # the relay receiver's URLs (any exporter is a valid receiver in fleet mode)
        direct = [h for h in hosts if h.index % 4 < 2]
        others = hosts[2:]
        dead = rng.choice(others)
        candidates = [h for h in others if h is not dead]
        from_direct = [h for h in candidates if h in direct]
        from_relay = [h for h in candidates if h not in direct]
        half = pressed_count // 2
        pressed = rng.sample(from_direct, half) + rng.sample(from_relay, pressed_count - half)
        quiet = [h for h in hosts if h not in pressed]
        report["pressed_hosts"] = sorted(h.name for h in pressed)
        report["dead_engine"] = dead.name
        report["restarted_exporter"] = entries[0].name

        # -- alerting: two clustered Alertmanager replicas, Prometheus sending to both ---------------------
        am_config = alertmanager_config(direct, entries, token_file)
        am_a = ClusteredAlertmanager(promdir / "am-a", am_config, "am-a")
        am_b = ClusteredAlertmanager(promdir / "am-b", am_config, "am-b")
        am_a.peers, am_b.peers = [am_b.cluster_address], [am_a.cluster_address]
        stack.callback(am_b.stop)
        stack.callback(am_a.stop)
        am_a.start()  # started first: the lower peer name, position 0, the replica that sends first
        am_b.start()
        am_a.wait_for(lambda: am_a.cluster_size() == 2 and am_b.cluster_size() == 2, 60, what="AM cluster of 2")

        rules = [render_rules({"disk_for": "2s"}), render_recording_rules()]
        prom = FleetPrometheus(
            promdir / "prom", rules, [am_a.url.removeprefix("http://"), am_b.url.removeprefix("http://")]
        )
        stack.callback(prom.stop)
        prom.start(timeout=60)

        # -- sizing: Prometheus without targets, then with the fleet ----------------------------------------
        time.sleep(10)
        rss_empty = proc_rss_bytes(prom.process_id)
        heap_empty = prom.own_metric("go_memstats_heap_inuse_bytes")
        series_empty = prom.head_series()
        prom.set_targets(hosts)
        prom.wait_for(
            lambda: prom.scalar('count(up{job=~"docker-image-exporter.*"} == 1)') == count, 120, 1, "all hosts scraped"
        )
        cpu_prom0, cpu_exp0, t0 = proc_cpu_seconds(prom.process_id), exporter_cpu(hosts), time.monotonic()
        time.sleep(STEADY_SECONDS)
        elapsed = time.monotonic() - t0
        cpu_prom1, cpu_exp1 = proc_cpu_seconds(prom.process_id), exporter_cpu(hosts)
        rss_fleet = proc_rss_bytes(prom.process_id)
        heap_fleet = prom.own_metric("go_memstats_heap_inuse_bytes")
        fleet_since = time.monotonic()
        series_fleet = prom.head_series()
        per_job: dict[str, dict[str, float]] = {}
        for job in (JOB_DEFAULT, JOB_LEAN):
            n = sum(1 for h in hosts if h.job == job)
            per_job[job] = {
                "hosts": n,
                "series_per_host": prom.scalar(f'count({{job="{job}"}}) / {n}'),
                "samples_scraped_per_host": prom.scalar(f'avg(scrape_samples_scraped{{job="{job}"}})'),
                "scrape_duration_ms_avg": 1000
                * prom.scalar(f'avg(avg_over_time(scrape_duration_seconds{{job="{job}"}}[30s]))'),
                "scrape_duration_ms_max": 1000
                * prom.scalar(f'max(max_over_time(scrape_duration_seconds{{job="{job}"}}[30s]))'),
            }
        # what one host's exposition is made of: the basis of the metric_relabel_configs advice
        families: dict[str, int] = {}
        for host in (hosts[0], hosts[1]):
            for name, _, _ in parse_samples(host.exporter.metrics_text()):
                key = f"{host.job} {name}"
                families[key] = families.get(key, 0) + 1
        report["samples_by_family"] = dict(sorted(families.items()))
        report["sizing"] = {
            "images_per_host": len(hosts[0].image_ids) + len(hosts[0].kept_ids),
            "head_series_empty": series_empty,
            "head_series_fleet": series_fleet,
            "head_series_per_host": round((series_fleet - series_empty) / count, 1),
            "per_job": per_job,
            "prometheus_rss_empty_mib": round(rss_empty / 2**20, 1),
            "prometheus_rss_fleet_mib": round(rss_fleet / 2**20, 1),
            "prometheus_rss_per_host_kib": round((rss_fleet - rss_empty) / count / 1024, 1),
            "prometheus_heap_inuse_per_host_kib": round((heap_fleet - heap_empty) / count / 1024, 1),
            "prometheus_cpu_per_host_millicores": round(1000 * (cpu_prom1 - cpu_prom0) / elapsed / count, 2),
            "exporter_cpu_millicores_avg": round(1000 * (cpu_exp1 - cpu_exp0) / elapsed / count, 1),
            "exporter_rss_mib_median": round(
                statistics.median(proc_rss_bytes(h.exporter.pid or 0) for h in hosts) / 2**20, 1
            ),
            "steady_seconds": round(elapsed, 1),
        }
        print("fleet sizing:", json.dumps(report["sizing"], indent=1))

        # -- before: the dashboards show a quiet fleet --------------------------------------------------------
        use_query = fleet_query("Top hosts by data-root use")
        up_query = fleet_query("Engine reachable")
        before = prom.query(use_query)
        assert len(before) == min(10, count) and not instances(before, above=WARN_USED), before
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "DockerDiskPressure"]
        # the fleet recording rules agree: every host counted, none under pressure, no engine down
        prom.wait_for(lambda: prom.scalar("sum(job:docker_hosts:count)") == count, 30, 1, "recorded host count")
        assert prom.scalar("sum(job:docker_hosts_under_disk_pressure:count)") == 0
        assert prom.scalar("sum(job:docker_engines_down:count)") == 0
        assert {r["metric"]["instance"] for r in prom.query(up_query) if r["value"][1] == "1"} == {
            h.address for h in hosts
        }

        # -- fault: one engine stopped; the dashboards show it down -------------------------------------------
        dead.engine.stop()
        prom.wait_for(
            lambda: [
                r for r in prom.query(up_query) if r["metric"]["instance"] == dead.address and r["value"][1] == "0"
            ],
            60,
            1,
            f"Engine reachable panel shows {dead.name} down",
        )

        # -- pressure, and the other faults while the alerts are in flight ------------------------------------
        watch = PressureWatch(prom, pressed)
        pressure_start = time.time()
        for host in pressed:
            host.press()
            watch.pressed_at[host.name] = time.time()
        watch.start()
        stack.callback(watch.stop_event.set)
        # A dies mid-alert: right after its first webhook notification went out, while the others are still
        # on their way (what A sent but had not yet gossiped, B sends again after its peer timeout)
        am_a.wait_for(lambda: webhook_notifications(am_a) >= 1, 120, 0.05, "Alertmanager A's first notification")
        am_a.kill()
        report["am_killed_after_seconds"] = round(time.time() - pressure_start, 1)
        entries[0].restart_exporter(down_seconds=5)
        wait_until(lambda: len(watch.freed_at) == len(pressed), 300, "every pressed host freed")
        prom.wait_for(
            lambda: not [a for a in prom.alerts() if a["labels"]["alertname"] == "DockerDiskPressure"],
            120,
            1,
            "DockerDiskPressure resolved everywhere",
        )
        # the surviving replica sends what it believes unsent after its peer timeout: give it that time, so
        # a duplicate would arrive before the counts below
        time.sleep(PEER_TIMEOUT + 10)
        watch.stop_event.set()
        watch.join(10)

        freed = {h.name: watch.freed_at[h.name] - watch.pressed_at[h.name] for h in pressed}
        report["pressure_to_freed_seconds"] = {
            "min": round(min(freed.values()), 1),
            "median": round(statistics.median(freed.values()), 1),
            "max": round(max(freed.values()), 1),
            "per_host": {k: round(v, 1) for k, v in sorted(freed.items())},
        }
        print("fleet: pressure to freed disk:", report["pressure_to_freed_seconds"])

        # -- exactly once per pressed host, nothing anywhere else --------------------------------------------
        problems: list[str] = []
        for host in pressed:
            audited = host.audited_runs()
            counted = host.runs_before_restart + host.runs_now()
            deleted = [
                r
                for recs in audited.values()
                for r in recs
                if r.get("event") == "image" and r.get("result") == "deleted"
            ]
            if len(audited) != 1 or counted != 1:
                problems.append(f"{host.name}: {len(audited)} audited runs, {counted} counted (want 1 and 1)")
            if not deleted:
                problems.append(f"{host.name}: the audited run deleted nothing: {audited}")
            if set(host.kept_ids) - host.image_ids_now():
                problems.append(f"{host.name}: deleted a protected image")
            if host.avail_ratio() < 0.30 * 0.95:
                problems.append(f"{host.name}: still {host.avail_ratio():.0%} free")
        for host in quiet:
            audited = host.audited_runs()
            counted = host.runs_before_restart + host.runs_now()
            if audited or counted:
                problems.append(f"{host.name} (not pressed): {len(audited)} audited runs, {counted} counted")
            if host is not dead and set(host.image_ids + host.kept_ids) - host.image_ids_now():
                problems.append(f"{host.name} (not pressed): images gone")
        assert not problems, "\n".join(problems)

        # both routing paths carried pressed hosts' alerts, and the relay forwarded them
        relayed_ok = sum(h.exporter.sample("docker_webhook_relays_total", {"result": "ok"}) or 0 for h in entries)
        assert relayed_ok >= pressed_count - half, f"relay entries relayed {relayed_ok} deliveries"
        report["relays_ok"] = relayed_ok
        report["am_b_webhook_notifications"] = webhook_notifications(am_b)

        # -- after: the dashboards ---------------------------------------------------------------------------
        pressed_addresses = {h.address for h in pressed}
        warned = set(watch.seen_in_warning)
        assert warned == pressed_addresses, (
            f"hosts shown above {WARN_USED:.0%} used while pressed: extra {warned - pressed_addresses}, "
            f"missing {pressed_addresses - warned}"
        )
        after = prom.query(use_query)
        assert not instances(after, above=WARN_USED), after
        down = [r for r in prom.query(up_query) if r["value"][1] == "0"]
        assert [r["metric"]["instance"] for r in down] == [dead.address], down
        assert prom.scalar("sum(job:docker_engines_down:count)") == 1
        assert prom.scalar("sum(job:docker_hosts_under_disk_pressure:count)") == 0
        assert 1 <= watch.most_under_pressure <= pressed_count, watch.most_under_pressure
        recorded_runs = prom.scalar('sum(job_action_result:docker_remediation_runs:increase1h{action="free-disk"})')
        assert round(recorded_runs) == pressed_count, f"recorded {recorded_runs} free-disk runs in the last hour"
        report["most_hosts_under_pressure_at_once"] = watch.most_under_pressure
        reclaim = prom.query(fleet_query("Top hosts by reclaimable bytes"))
        if len([h for h in quiet if h is not dead]) >= 10:
            assert not instances(reclaim) & pressed_addresses, "a freed host still ranks among the most reclaimable"
        # memory once the head has held the fleet for a few minutes more (it grows with samples kept)
        report["sizing"]["prometheus_rss_end_per_host_kib"] = round(
            (proc_rss_bytes(prom.process_id) - rss_empty) / count / 1024, 1
        )
        report["sizing"]["prometheus_heap_inuse_end_per_host_kib"] = round(
            (prom.own_metric("go_memstats_heap_inuse_bytes") - heap_empty) / count / 1024, 1
        )
        report["sizing"]["end_after_seconds"] = round(time.monotonic() - fleet_since + elapsed, 1)
        report["total_seconds"] = round(time.monotonic() - started, 1)

    left = processes_referencing(str(promdir))
    assert not left, f"Prometheus/Alertmanager processes left running: {left}"
    report["teardown_seconds"] = round(time.monotonic() - started - report["total_seconds"], 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"fleet-{count}-{datetime.now(UTC):%Y-%m-%d}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"fleet: done in {time.monotonic() - started:.0f} s, results in {out}")


def _teardown_and_check(hosts: list[Host], workers: int) -> None:
    """Stop every host and prove nothing of the fleet is left: no process, mount or loop device."""
    problems = teardown_hosts(hosts, workers)
    for host in hosts:
        if hasattr(host, "workdir") and processes_referencing(str(host.workdir)):
            problems.append(f"{host.name}: processes still running {processes_referencing(str(host.workdir))}")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-s", *os.environ.get("PYTEST_ARGS", "").split()]))
