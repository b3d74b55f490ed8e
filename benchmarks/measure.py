"""The measurements of issue 14, each next to its reference taken in the same run on the same engine.

Every phase takes running engines/exporters and returns a JSON-able dict; `benchmarks.run` orders them.
Timings of the exporter and of its reference are interleaved round by round, so a noisy neighbour on the
shared machine hits both sides alike.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procstat, profiling
from benchmarks.clients import EngineAPI, ExporterHTTP
from benchmarks.imageset import PROBE_REPO
from benchmarks.stats import compared, percentile, summary
from tests.harness.certs import client_context, issue, make_ca
from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess, find_sample

TOKEN = "bench-token"
#: Large enough that no per-tag series is ever dropped (the "uncapped" exporter).
UNCAPPED = 1_000_000  # the config bound; far above any host
POLLS = "docker_exporter_polls_total"
PENDING = "docker_exporter_pending_inspects"
#: How often the scraper runs while a plan or a run does (and at rest, for the p99 it is compared with): finer
#: than the stalls it looks for (tens of ms), paced rather than back to back so it measures the stall, not
#: the plan's starvation by a scraper that never lets go.
SCRAPE_PACE = 0.015
#: Changes made to measure RSS growth over changes (`change_memory`).
MEMORY_CHANGES = 1000


@dataclass(frozen=True)
class Options:
    """How many rounds of what; the profiles in `benchmarks.run` set these."""

    count: int
    scrape_rounds: int = 30
    startup_rounds: int = 3
    change_rounds: int = 20
    burst: int = 500
    plan_rounds: int = 3
    #: plans with the audit log on disk: every would-delete line is fsync'd, so at 10k one plan takes minutes
    disk_plan_rounds: int = 1
    dry_runs: int = 100
    #: stop the dry-run series early after this long (today's plans at 10k are slow)
    dry_run_budget_seconds: float = 900.0
    idle_seconds: float = 30.0
    delete_count: int = 1000
    #: rounds of the deletion figure, alternating which side goes first: one round's rate varies 2-3x on a
    #: shared machine, so two were too few to tell x0.85 from x0.7
    delete_rounds: int = 4
    profile: bool = True
    catch_up_rounds: int = 1
    memory_changes: int = MEMORY_CHANGES


# --------------------------------------------------------------------------------------------- exporters


def exporter_config(
    engine: PrivateDockerd, workdir: Path, name: str, *, uncapped: bool = False, audit_log: Path | None = None
) -> dict[str, Any]:
    """Events drive every refresh (10 minute poll interval), so a change's latency is the event path's.

    The capped ("default settings") exporter also has remediation in global dry-run mode with one action of
    each planning type; nothing is protected as local-only, or every loaded image would be. The audit log
    goes to `audit_log` (default: the workdir, on disk: every line is fsync'd, dry-run lines included).
    """
    config: dict[str, Any] = {
        "poll": {"interval": "10m", "disk_usage_interval": "10m"},
        "filesystem": {"path": str(engine.data_root)},
        "state": {"path": str(workdir / f"{name}-state.json")},
    }
    if uncapped:
        config["metrics"] = {"max_image_series": UNCAPPED}
        return config
    config["remediation"] = {
        "enabled": True,
        "dry_run": True,
        "auth": {"bearer_token": TOKEN},
        "audit_log": str(audit_log or workdir / f"{name}-audit.jsonl"),
        "protect": {"local_only": False},
        "actions": {
            "free": {"type": "free_space", "target_avail_ratio": 0.99, "min_age": "0s", "max_deletions": 100_000},
            "keep": {"type": "keep_last", "keep": 5, "min_age": "0s", "max_deletions": 100_000},
            "unused": {"type": "prune_unused", "min_age": "0s", "max_deletions": 100_000},
        },
    }
    return config


def deleting_config(engine: PrivateDockerd, workdir: Path, limit: int) -> dict[str, Any]:
    """Remediation for real (not dry run): `unused` deletes up to `limit` images no container uses."""
    return {
        "poll": {"interval": "10m", "disk_usage_interval": "10m"},
        "filesystem": {"path": str(engine.data_root)},
        "state": {"path": str(workdir / "delete-state.json")},
        "remediation": {
            "enabled": True,
            "dry_run": False,
            "auth": {"bearer_token": TOKEN},
            "audit_log": str(workdir / "delete-audit.jsonl"),
            "protect": {"local_only": False},
            "actions": {"unused": {"type": "prune_unused", "min_age": "0s", "max_deletions": limit}},
        },
    }


def started(exp: ExporterProcess, timeout: float = 900) -> float:
    """Spawn `exp` and return seconds from spawn to `/-/ready` (asked every 10 ms from the spawn on; waiting
    for `/-/healthy` first, every 50 ms, added up to 50 ms of polling granularity to the figure)."""
    start = time.perf_counter()
    exp.spawn()
    deadline = time.monotonic() + timeout
    while not _ready(exp):
        if not exp.running or time.monotonic() > deadline:
            raise RuntimeError(f"{exp.name} not ready after {timeout}s:\n{exp.logs(30)}")
        time.sleep(0.01)
    return time.perf_counter() - start


def _ready(exp: ExporterProcess) -> bool:
    try:
        with urllib.request.urlopen(exp.url + "/-/ready", timeout=5, context=exp.client_tls) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout}s")
        time.sleep(0.02)


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# --------------------------------------------------------------------------------------------- phases


def startup(engine: PrivateDockerd, workdir: Path, opts: Options) -> dict[str, Any]:
    """Start -> ready of a fresh exporter (no state), next to one raw list and an inspect of every image."""
    api = EngineAPI(engine)
    ready, raw_list, inspect_all = [], [], []
    try:
        for i in range(opts.startup_rounds):
            images, took = api.list_images()
            raw_list.append(took)
            inspect_all.append(api.inspect_all([img["Id"] for img in images]))
            exp = ExporterProcess(workdir, engine.host, exporter_config(engine, workdir, f"start{i}"), name=f"start{i}")
            try:
                ready.append(started(exp))
            finally:
                exp.stop()
    finally:
        api.close()
    result = compared(ready, raw_list, digits=3)
    result["inspect_every_image"] = summary(inspect_all, digits=3)
    result.update(interpreter(opts.startup_rounds))
    return result


def interpreter(rounds: int) -> dict[str, Any]:
    """What any Python process pays before the exporter's own work, beside start -> ready: `python -c pass`
    (wall), and the exporter's imports (`-X importtime`: the sum of every module's own time, importing
    the CLI and the app as a start does, and aiohttp as `cli.run` does)."""
    bare: list[float] = []
    imports: list[float] = []
    for _ in range(max(rounds, 3)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
        code = (
            "from exporter.web.aiohttpload import import_aiohttp; import_aiohttp(); import exporter.cli, exporter.app"
        )
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code], check=True, capture_output=True, text=True
        ).stderr
        imports.append(sum(int(m) for m in re.findall(r"^import time:\s+(\d+) \|", out, re.MULTILINE)) / 1e6)
    return {"python_c_pass": summary(bare, 3), "imports": summary(imports, 3)}


def scrapes(
    engine: PrivateDockerd, capped: ExporterProcess, uncapped: ExporterProcess, opts: Options
) -> dict[str, Any]:
    """`/metrics` of the default-settings and of the uncapped exporter, round by round with a raw list."""
    api = EngineAPI(engine)
    clients = {"default": ExporterHTTP(capped.address), "uncapped": ExporterHTTP(uncapped.address)}
    raw: list[float] = []
    took: dict[str, list[float]] = {k: [] for k in clients}
    texts: dict[str, str] = {}
    try:
        for _ in range(opts.scrape_rounds):
            raw.append(api.list_images()[1])
            for key, client in clients.items():
                texts[key], seconds = client.scrape()
                took[key].append(seconds)
    finally:
        api.close()
        for client in clients.values():
            client.close()
    result: dict[str, Any] = {}
    for key in clients:
        result[key] = compared(took[key], raw)
        result[key]["exposition_bytes"] = len(texts[key].encode())
        result[key]["series"] = series_count(texts[key])
    return result


def _cpu_of(*pids: int | None) -> list[float | None]:
    return [procstat.cpu_seconds(pid) if pid else None for pid in pids]


def _cpu_since(before: list[float | None], pids: tuple[int | None, ...], images: int) -> list[float | None]:
    """CPU ms per image of each of `pids` since `before` (`_cpu_of` of the same pids)."""
    now = _cpu_of(*pids)
    return [
        round((b - a) * 1000 / images, 3) if a is not None and b is not None else None
        for a, b in zip(before, now, strict=True)
    ]


def tls_scrapes(engine: PrivateDockerd, workdir: Path, plain: ExporterProcess, opts: Options) -> dict[str, Any]:
    """The default scrape over HTTPS (`--web.config.file`, P-256 certificate) with a new handshake every time
    (the worst case: Prometheus keeps connections open), round by round with the same scrape over a new
    plain HTTP connection to `plain`."""
    pki = workdir / "pki"
    ca = make_ca(pki, "bench-ca")
    server = issue(ca, pki, "bench-exporter")
    web = workdir / "web.yml"
    web.write_text(json.dumps({"tls_server_config": {"cert_file": str(server.cert), "key_file": str(server.key)}}))
    exp = ExporterProcess(
        workdir,
        engine.host,
        exporter_config(engine, workdir, "tls"),
        name="tls",
        extra_args=["--web.config.file", str(web)],
        client_tls=client_context(ca),
    )
    https: list[float] = []
    http: list[float] = []
    try:
        started(exp)
        for _ in range(opts.scrape_rounds):
            http.append(_new_connection_get(plain.url + "/metrics", None))
            https.append(_new_connection_get(exp.url + "/metrics", exp.client_tls))
    finally:
        exp.stop()
    return compared(https, http)


def _new_connection_get(url: str, context: ssl.SSLContext | None) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300, context=context) as resp:
        resp.read()
    return time.perf_counter() - start


def memory_and_idle(exporters: Mapping[str, ExporterProcess], opts: Options) -> dict[str, Any]:
    """RSS of each exporter, then the CPU each uses over the same idle window (nothing scrapes it)."""
    pids = {key: exp.pid for key, exp in exporters.items() if exp.pid is not None}
    rss = {key: procstat.rss_bytes(pid) for key, pid in pids.items()}
    cpu = procstat.cpu_percent(list(pids.values()), opts.idle_seconds)
    return {
        key: {"rss_bytes": rss[key], "idle_cpu_percent": cpu[pid], "idle_seconds": opts.idle_seconds}
        for key, pid in pids.items()
    }


def profile_scrapes(exp: ExporterProcess, out: Path, scrapes_: int = 10) -> dict[str, Any]:
    """py-spy over `scrapes_` back-to-back scrapes."""
    assert exp.pid is not None
    client = ExporterHTTP(exp.address)
    try:
        with profiling.sampled(exp.pid, out) as result:
            for _ in range(scrapes_):
                client.scrape()
    finally:
        client.close()
    return result


def profile_first_poll(engine: PrivateDockerd, workdir: Path) -> dict[str, Any]:
    """py-spy over a fresh exporter's start until ready: its first poll (the one that inspects every image)."""
    exp = ExporterProcess(workdir, engine.host, exporter_config(engine, workdir, "profile"), name="profile")
    try:
        exp.start(timeout=900)
        assert exp.pid is not None
        with profiling.sampled(exp.pid, workdir / "first-poll.raw") as result:
            wait_until(lambda: _ready(exp), 900, "ready")
    finally:
        exp.stop()
    return result


def _probe_tag_present(client: ExporterHTTP, tag: str) -> tuple[bool, float]:
    """(whether any series of the probe's `tag` is in a scrape, when that scrape ended): a substring test, not
    a parse (parsing an uncapped exposition takes the client longer than the exporter takes to serve it).
    prometheus_client writes labels sorted by name, so `tag` follows `repository` and closes the labels."""
    text = client.scrape()[0]
    ended = time.perf_counter()
    return f'repository="{PROBE_REPO}",tag="{tag}"}}' in text, ended


def change_to_metrics(engine: PrivateDockerd, exp: ExporterProcess, opts: Options) -> dict[str, Any]:
    """`docker tag` / `docker rmi` of a tag on the probe image until a scrape shows it, scraping back to back.

    `value` is from the CLI's return to the end of the first scrape that completes showing the change (what
    a scraper waits for); `scrape_start` to that scrape's start (the render it waited for shows as the
    difference). The CLI call itself is the reference.
    """
    client = ExporterHTTP(exp.address)
    visible: list[float] = []
    served: list[float] = []
    cli: list[float] = []
    try:
        polls_before = client.sample(POLLS) or 0.0
        for i in range(opts.change_rounds):
            for verb, args, want in (
                ("tag", ("tag", f"{PROBE_REPO}:base", f"{PROBE_REPO}:c{i}"), True),
                ("rmi", ("rmi", f"{PROBE_REPO}:c{i}"), False),
            ):
                start = time.perf_counter()
                engine.cli(*args)
                done = time.perf_counter()
                cli.append(done - start)
                while True:
                    scrape_start = time.perf_counter()
                    present, ended = _probe_tag_present(client, f"c{i}")
                    if present == want:
                        visible.append(scrape_start - done)
                        served.append(ended - done)
                        break
                    if scrape_start - done > 120:
                        raise RuntimeError(f"docker {verb} c{i} not visible in /metrics after 120 s")
        polls = (client.sample(POLLS) or 0.0) - polls_before
    finally:
        client.close()
    result = compared(served, cli, digits=4)
    result["served"] = summary(served)
    result["scrape_start"] = summary(visible)
    result["changes"] = len(visible)
    result["polls"] = polls
    return result


def change_memory(engine: PrivateDockerd, exp: ExporterProcess, opts: Options) -> dict[str, Any]:
    """RSS before and after `opts.memory_changes` changes (a tag added to the probe, then removed, over the
    raw API), once the last one is in `/metrics`: memory must not grow with the number of changes."""
    assert exp.pid is not None
    api = EngineAPI(engine)
    client = ExporterHTTP(exp.address)
    repo = "bench/churn"
    try:
        _settle(client)
        before = procstat.rss_bytes(exp.pid)
        start = time.perf_counter()
        for i in range(opts.memory_changes // 2):
            api.tag(f"{PROBE_REPO}:base", repo, f"m{i}")
            api.remove(f"{repo}:m{i}")
        last = f"m{opts.memory_changes // 2 - 1}"
        wait_until(lambda: f'repository="{repo}",tag="{last}"}}' not in client.scrape()[0], 300, "the last change")
        seconds = time.perf_counter() - start
        _settle(client)
        after = procstat.rss_bytes(exp.pid)
    finally:
        api.close()
        client.close()
    return {
        "changes": opts.memory_changes // 2 * 2,
        "seconds": round(seconds, 2),
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_ratio": round(after / before - 1, 4),
    }


def untag_burst(engine: PrivateDockerd, exp: ExporterProcess, opts: Options) -> dict[str, Any]:
    """`opts.burst` extra tags on the probe image, then all untagged at once over the raw API: how long until
    `/metrics` has none of them, and how many polls (the exporter's own counter) the burst caused."""
    api = EngineAPI(engine)
    client = ExporterHTTP(exp.address)
    repo = "bench/burst"

    def tags_listed() -> float:
        return find_sample(client.scrape()[0], "docker_repository_tags", {"repository": repo}) or 0.0

    try:
        for i in range(opts.burst):
            api.tag(f"{PROBE_REPO}:base", repo, f"t{i}")
        wait_until(lambda: tags_listed() == opts.burst, 300, "burst tags in /metrics")
        _settle(client)
        polls_before = client.sample(POLLS) or 0.0
        start = time.perf_counter()
        for i in range(opts.burst):
            api.remove(f"{repo}:t{i}")
        api_seconds = time.perf_counter() - start
        wait_until(lambda: tags_listed() == 0, 300, "burst untags in /metrics")
        to_metrics = time.perf_counter() - start
        _settle(client)
        polls = (client.sample(POLLS) or 0.0) - polls_before
    finally:
        api.close()
        client.close()
    return {
        "untags": opts.burst,
        "api_seconds": round(api_seconds, 3),
        "to_metrics_seconds": round(to_metrics, 3),
        "polls": polls,
    }


def _settle(client: ExporterHTTP, quiet: float = 2.0, timeout: float = 120) -> None:
    """Wait until the poll counter has not moved for `quiet` seconds (trailing debounced polls are done)."""
    deadline = time.monotonic() + timeout
    last, since = client.sample(POLLS), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.25)
        now = client.sample(POLLS)
        if now != last:
            last, since = now, time.monotonic()


def plans(
    exp: ExporterProcess, rounds: int, actions: tuple[str, ...] = ("free", "keep"), pace: float = SCRAPE_PACE
) -> dict[str, Any]:
    """Dry-run plans, each round once alone and once while another connection scrapes every `pace` seconds:
    plan time, plan time while scraped, and the scrape latencies during plans next to the same paced scraping
    at rest for as long (`scrape_p99_ratio`: p99 during / p99 at rest)."""
    client = ExporterHTTP(exp.address, token=TOKEN)
    result: dict[str, Any] = {}
    try:
        for action in actions:
            alone: list[float] = []
            scraped: list[float] = []
            during: list[float] = []
            rest: list[float] = []
            candidates = 0
            for _ in range(rounds):
                answer, seconds = client.run_action(action, dry_run=True)
                alone.append(seconds)
                candidates = int(answer.get("candidates", 0))
                rest.extend(paced_at_rest(exp, max(seconds, 1.0), pace))
                latencies, stop = scrape_in_background(exp, pace)
                scraped.append(client.run_action(action, dry_run=True)[1])
                stop()
                during.extend(latencies)
            result[action] = {
                "plan": summary(alone, 3),
                "plan_while_scraped": summary(scraped, 3),
                **during_vs_rest(during, rest),
                "candidates": candidates,
            }
    finally:
        client.close()
    return result


def during_vs_rest(during: list[float], rest: list[float], what: str = "plan") -> dict[str, Any]:
    """Paced scrape latencies while something ran, next to the same pacing at rest."""
    out: dict[str, Any] = {f"scrape_during_{what}": summary(during), "scrape_at_rest": summary(rest)}
    at_rest = out["scrape_at_rest"]["p99"]
    out["scrape_p99_ratio"] = round(out[f"scrape_during_{what}"]["p99"] / at_rest, 3) if at_rest else None
    return out


def paced_at_rest(exp: ExporterProcess, seconds: float, pace: float = SCRAPE_PACE) -> list[float]:
    """Scrape latencies every `pace` seconds for `seconds`, nothing else going on."""
    latencies, stop = scrape_in_background(exp, pace)
    time.sleep(seconds)
    stop()
    return latencies


def scrape_in_background(exp: ExporterProcess, pace: float) -> tuple[list[float], Callable[[], None]]:
    """Scrape every `pace` seconds (or back to back when a scrape takes longer) in a thread; the returned
    stop() ends it after the current scrape."""
    latencies: list[float] = []
    halt = threading.Event()

    def loop() -> None:
        client = ExporterHTTP(exp.address)
        try:
            while not halt.is_set():
                took = client.scrape()[1]
                latencies.append(took)
                halt.wait(max(0.0, pace - took))
        finally:
            client.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.05)  # the first scrape is under way when the plan starts

    def stop() -> None:
        halt.set()
        thread.join(timeout=300)

    return latencies, stop


def fsync_latency(path: Path, writes: int = 100) -> dict[str, Any]:
    """One audit-sized line appended and fsync'd, `writes` times, where the audit log lives: what each
    audited line of a plan costs at least."""
    line = b'{"event":"image","result":"would_delete","references":["bulk/img0:0"],"size":262144}\n' * 3
    took: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for _ in range(writes):
            start = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            took.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return summary(took, 5)


def dry_run_memory(exp: ExporterProcess, audit_log: Path, opts: Options) -> dict[str, Any]:
    """RSS before and after `opts.dry_runs` dry runs (free, keep, unused in turn; fewer if they exceed the
    time budget).

    The exporter's audit log (opened O_APPEND) is emptied after each run, so 100 runs of 10,000 lines do not
    fill the tmpfs it sits on; the exporter's own memory is what is measured.
    """
    assert exp.pid is not None
    client = ExporterHTTP(exp.address, token=TOKEN)
    actions = ("free", "keep", "unused")
    took: list[float] = []
    try:
        before = procstat.rss_bytes(exp.pid)
        for i in range(opts.dry_runs):
            took.append(client.run_action(actions[i % len(actions)], dry_run=True)[1])
            os.truncate(audit_log, 0)
            if sum(took) > opts.dry_run_budget_seconds:
                break  # recorded: "dry_runs" says how many were done
        after = procstat.rss_bytes(exp.pid)
    finally:
        client.close()
    return {
        "dry_runs": len(took),
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_ratio": round(after / before - 1, 4),
        "run_seconds": summary(took, 3),
    }


def deletion(
    engine: PrivateDockerd,
    workdir: Path,
    load: Callable[[], float],
    opts: Options,
    watch: Callable[[ExporterProcess], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Images/s deleting `opts.delete_count` fresh unused images: the exporter's `prune_unused` (one DELETE
    per image, after planning) against `docker image prune -a -f` on the same freshly loaded set.

    Rounds alternate which goes first. Both sides run while the exporter is scraped every `SCRAPE_PACE` (the
    scraper costs a share of the cores; the scrapes while prune deletes are the reference for those while
    the exporter does). The exporter runs throughout (it must see the images to plan them),
    and each side starts with it at rest after the load (LastTagTimes read, no poll pending). `watch` (a
    profiler, `benchmarks.deletion_only`) is started right before each of the exporter's runs and stopped
    right after it.
    """
    api = EngineAPI(engine)
    exp = ExporterProcess(workdir, engine.host, deleting_config(engine, workdir, opts.delete_count), name="delete")
    ours: list[float] = []
    prune: list[float] = []
    loads: list[float] = []
    during: list[float] = []
    during_prune: list[float] = []
    rest: list[float] = []
    per_round: list[dict[str, Any]] = []
    try:
        started(exp)
        client = ExporterHTTP(exp.address, token=TOKEN)
        for r in range(opts.delete_rounds):
            this_round: dict[str, Any] = {"first": "exporter" if r % 2 == 0 else "prune"}
            order = ("exporter", "prune") if r % 2 == 0 else ("prune", "exporter")
            for who in order:
                if api.list_images()[0]:
                    raise RuntimeError("the deletion engine must be empty before a load")
                loads.append(load())
                wait_until(lambda: client.sample("docker_images") == opts.delete_count, 300, "exporter sees the load")
                # at rest, as the other figures: the load's LastTagTimes read and its trailing polls done (a run
                # started before would first wait for them: the images are seconds old, not what cleanup meets)
                wait_until(lambda: client.sample(PENDING) == 0, 300, "LastTagTimes of the load")
                _settle(client)
                if who == "exporter":
                    at_rest = paced_at_rest(exp, 2.0)
                    rest.extend(at_rest)
                    latencies, stop = scrape_in_background(exp, SCRAPE_PACE)
                    unwatch = watch(exp) if watch is not None else None
                    cpu = _cpu_of(exp.pid, engine.pid)
                    answer, seconds = client.run_action("unused", dry_run=False)
                    this_round["exporter_cpu_ms_per_image"], this_round["engine_cpu_ms_per_image"] = _cpu_since(
                        cpu, (exp.pid, engine.pid), opts.delete_count
                    )
                    if unwatch is not None:
                        unwatch()
                    stop()
                    during.extend(latencies)
                    this_round["scrape_p99_ms"] = {
                        "during": round(percentile(latencies, 99) * 1000, 2),
                        "at_rest": round(percentile(at_rest, 99) * 1000, 2),
                    }
                    deleted = int(answer.get("images_deleted", 0))
                    rate = ours
                else:
                    # scraped as the exporter's runs are: both rates are taken with the same scraper taking its
                    # share of the two cores, and the scrapes meanwhile say what a deletion this fast does to them
                    latencies, stop = scrape_in_background(exp, SCRAPE_PACE)
                    cpu = _cpu_of(None, engine.pid)
                    start = time.perf_counter()
                    engine.cli("image", "prune", "-a", "-f")
                    seconds = time.perf_counter() - start
                    stop()
                    during_prune.extend(latencies)
                    this_round["prune_scrape_p99_ms"] = round(percentile(latencies, 99) * 1000, 2)
                    this_round["prune_engine_cpu_ms_per_image"] = _cpu_since(
                        cpu, (None, engine.pid), opts.delete_count
                    )[1]
                    deleted = opts.delete_count - len(api.list_images()[0])
                    rate = prune
                if deleted != opts.delete_count:
                    raise RuntimeError(f"{who} deleted {deleted} of {opts.delete_count} images")
                rate.append(deleted / seconds)
                this_round[f"{who}_per_s"] = round(deleted / seconds, 1)
                wait_until(lambda: client.sample("docker_images") == 0, 300, "exporter sees the deletion")
            per_round.append(this_round)
        client.close()
    finally:
        exp.stop()
        api.close()
    result = compared(ours, prune, digits=1)
    result["images"] = opts.delete_count
    result["load_seconds"] = summary(loads, 2)
    result.update(during_vs_rest(during, rest, "run"))
    result["scrape_during_prune"] = summary(during_prune)
    prune_p99 = result["scrape_during_prune"]["p99"]
    result["scrape_p99_vs_prune"] = round(result["scrape_during_run"]["p99"] / prune_p99, 3) if prune_p99 else None
    # each round's exporter rate over prune's from the same round: a load spell hits both sides of a round
    result["paired_ratio"] = summary([r["exporter_per_s"] / r["prune_per_s"] for r in per_round], 3)
    result["rounds"] = per_round
    return result
