"""The landing page at `/`: where the space goes, what remediation did and will do, and the last audit lines.

For a host without Grafana: plain HTML with inline CSS, no JavaScript. Rendered from the poller's current
snapshot only (the numbers are the ones /metrics serves; the page never calls the engine). Sizes are shown in
IEC units (KiB, MiB, GiB: powers of 1024, as the docs write them) with the exact byte count in `title` and in
`data-value`, next to `data-metric` naming the metric it equals, so people and tests can check them exactly.

Everything that comes from the engine or the audit log (repository names, error texts, audit details) is
HTML-escaped: tags and labels come from anyone who can push an image.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import __revision__, __version__
from exporter.config import RemediationConfig
from exporter.core.snapshot import Image, Snapshot
from exporter.core.units import format_duration
from exporter.engine.hints import engine_error_hint
from exporter.remediation.audittail import AuditTail
from exporter.remediation.planner import maturing, utc
from exporter.remediation.status import ActionStatus

TOP_REPOSITORIES = 10
FULL_PERCENT = 85  # the data-root bar turns red from here
_IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

esc = html.escape


def human_bytes(value: int) -> str:
    """`1.5 MiB`-style IEC size; whole bytes below 1 KiB."""
    size = float(value)
    for unit in _IEC_UNITS:
        if abs(size) < 1024 or unit == _IEC_UNITS[-1]:
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _bytes(value: int, metric: str | None = None, labels: str = "") -> str:
    """A size for people, with the exact bytes for tooltips and tests (and the metric it equals)."""
    attrs = f' data-metric="{esc(metric)}"' if metric else ""
    if labels:
        attrs += f' data-labels="{esc(labels)}"'
    return f'<span class="num"{attrs} data-value="{value}" title="{value:,} bytes">{esc(human_bytes(value))}</span>'


def _count(value: int, metric: str | None = None) -> str:
    attrs = f' data-metric="{esc(metric)}"' if metric else ""
    return f'<span class="num"{attrs} data-value="{value}">{value:,}</span>'


def _when(timestamp: float | None, now: float, *, future: bool = False, metric: str | None = None) -> str:
    """UTC time with how long ago (or until); `-` when unknown."""
    if timestamp is None:
        return '<span class="muted">-</span>'
    try:
        text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):  # e.g. a corrupt audit line's `ts`: show it, do not fail
        return f'<span class="muted">{esc(repr(timestamp))}</span>'
    delta = rough_duration(abs(timestamp - now))
    relative = f"in {delta}" if future else f"{delta} ago"
    attrs = f' data-metric="{esc(metric)}"' if metric else ""
    return f'<time{attrs} data-value="{timestamp!r}" title="{text}">{relative}</time>'


def rough_duration(seconds: float) -> str:
    """The two largest units of a Prometheus-style duration (`3y2w`, `5h59m`, `42s`): exact is in `title`."""
    exact = format_duration(round(seconds))
    units = re.findall(r"[0-9]+[a-z]+", exact)
    return "".join(units[:2])


@dataclass(frozen=True)
class RepositoryUsage:
    """Bytes only a repository's images hold (what deleting all of them frees), and how many images/tags."""

    repository: str
    images: int
    tags: int
    unique_bytes: int
    exact: bool  # False when an image's shared size is unknown and its whole size was counted


def repositories_by_unique_bytes(images: Sequence[Image], limit: int = TOP_REPOSITORIES) -> list[RepositoryUsage]:
    """Repositories, largest unique bytes first; an image tagged in two repositories counts in both."""
    by_repo: dict[str, dict[str, Image]] = {}
    tags: dict[str, int] = {}
    for image in images:
        for ref in image.refs:
            by_repo.setdefault(ref.repository, {})[image.id] = image
            tags[ref.repository] = tags.get(ref.repository, 0) + 1
    usage = []
    for repo, members in by_repo.items():
        uniques = [i.unique_size for i in members.values()]
        total = sum(u if u is not None else i.size for u, i in zip(uniques, members.values(), strict=True))
        usage.append(RepositoryUsage(repo, len(members), tags[repo], total, all(u is not None for u in uniques)))
    usage.sort(key=lambda u: (-u.unique_bytes, u.repository))
    return usage[:limit]


# ------------------------------------------------------------------------------------------------ sections


def _events(live: bool | None) -> str:
    """The event stream's state: no metric says it (a new family would change every engine's golden file)."""
    if live:
        return "live: changes are applied as they happen"
    return (
        '<span class="error">not live</span> (connecting, or lost and reconnecting): changes show with the next '
        "poll, and remediation runs poll afresh before they plan"
    )


def _status(
    snapshot: Snapshot | None,
    up: bool,
    last_error: str | None,
    docker_host: str,
    remediation: bool,
    now: float,
    events_live: bool | None = None,
) -> str:
    if snapshot is not None and snapshot.engine is not None:
        e = snapshot.engine
        engine = (
            f"Docker {esc(e.version)} (API {esc(e.api_version)}, {esc(e.storage_driver)}, {esc(e.os)}/{esc(e.arch)})"
        )
        poll = _when(snapshot.taken_at, now, metric="docker_exporter_snapshot_timestamp_seconds")
    else:
        engine, poll = "not reached yet", "none yet"
    pill = '<span class="pill ok">up</span>' if up else '<span class="pill bad">DOWN</span>'
    rows = [
        (
            "Engine",
            f'{engine} at <code>{esc(docker_host)}</code> <span data-metric="docker_up" '
            f'data-value="{1 if up else 0}">{pill}</span>',
        ),
        ("Last poll", poll),
        *([] if events_live is None else [("Event stream", _events(events_live))]),
        ("Remediation", "enabled" if remediation else "disabled"),
        ("Exporter", f"{esc(__version__)} (revision {esc(__revision__)})"),
    ]
    if last_error:
        rows.append(("Last error", f'<span class="error">{esc(last_error)}</span>'))
        hint = engine_error_hint(last_error)
        if hint:
            rows.append(("What to do", esc(hint)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<section id="status"><table class="kv">{body}</table></section>'


def _card(title: str, main: str, lines: Sequence[str] = (), *, ident: str) -> str:
    extra = "".join(f"<div>{line}</div>" for line in lines)
    return f'<div class="card" id="{ident}"><h3>{title}</h3><div class="big">{main}</div>{extra}</div>'


def _space(snapshot: Snapshot, now: float) -> str:
    cards = []
    fs = snapshot.filesystem
    if fs is not None:
        used = max(fs.size - fs.avail, 0)
        percent = 100 * used / fs.size if fs.size else 0.0
        labels = f'path="{fs.path}"'
        cards.append(
            _card(
                f"Data root <code>{esc(fs.path)}</code>",
                f"{_bytes(fs.avail, 'docker_filesystem_avail_bytes', labels)} free",
                [
                    f"of {_bytes(fs.size, 'docker_filesystem_size_bytes', labels)}, "
                    f"{_bytes(used)} used ({percent:.0f}%)",
                    f'<div class="bar{" full" if percent >= FULL_PERCENT else ""}" title="{percent:.1f}% used">'
                    f'<span style="width:{percent:.1f}%"></span></div>',
                ],
                ident="filesystem",
            )
        )
    images = snapshot.images
    dangling = snapshot.dangling
    engine = snapshot.engine
    if engine is not None and (engine.containerd_store or engine.podman):
        # every image lists a repo digest on these engines: which exist only here cannot be told
        only_here = "which images exist only on this host: unknown on this engine (every image lists a repo digest)"
    else:
        local = [i for i in images if i.local_only]
        only_here = (
            f"{_count(len(local), 'docker_images_local_only')} images "
            f"({_bytes(sum(i.size for i in local), 'docker_images_local_only_size_bytes')}) exist only on this host"
        )
    cards.append(
        _card(
            "Images",
            _count(len(images), "docker_images"),
            [
                f"{_bytes(sum(i.size for i in images), 'docker_images_size_bytes')} as <code>docker images</code> "
                "adds them up",
                f"{_count(len(snapshot.unused), 'docker_images_unused')} unused",
                only_here,
            ],
            ident="images",
        )
    )
    cards.append(
        _card(
            "Dangling",
            _count(len(dangling), "docker_images_dangling"),
            [f"{_bytes(sum(i.size for i in dangling), 'docker_images_dangling_size_bytes')} (untagged images)"],
            ident="dangling",
        )
    )
    du = snapshot.disk_usage
    if du is not None:
        disk = _bytes(du.layers_size, "docker_images_disk_usage_bytes") if du.layers_size is not None else "unknown"
        reclaim = _bytes(du.reclaimable, "docker_images_reclaimable_bytes") if du.reclaimable is not None else "-"
        cards.append(
            _card(
                "Reclaimable",
                reclaim,
                [
                    f"of {disk} image layers on disk",
                    f"<small>/system/df read {_when(du.taken_at, now, metric='docker_exporter_disk_usage_timestamp_seconds')}</small>",
                ],
                ident="reclaimable",
            )
        )
        bc = du.build_cache
        if bc is not None:
            cards.append(
                _card(
                    "Build cache",
                    _bytes(bc.size, "docker_build_cache_size_bytes"),
                    [
                        f"{_bytes(bc.reclaimable, 'docker_build_cache_reclaimable_bytes')} reclaimable",
                        f"{_count(bc.entries, 'docker_build_cache_entries')} entries",
                    ],
                    ident="build-cache",
                )
            )
    else:
        cards.append(
            _card("Reclaimable", "not known yet", ["<small>/system/df not read yet</small>"], ident="reclaimable")
        )
    return f'<section id="space"><h2>Where the space goes</h2><div class="cards">{"".join(cards)}</div></section>'


def _repositories(snapshot: Snapshot) -> str:
    top = repositories_by_unique_bytes(snapshot.images)
    if not top:
        return '<section id="repositories"><h2>Top repositories</h2><p class="muted">No tagged images.</p></section>'
    biggest = max(top[0].unique_bytes, 1)
    rows = []
    for repo in top:
        width = 100 * repo.unique_bytes / biggest
        note = "" if repo.exact else ' <small class="muted" title="shared sizes not known yet">(upper bound)</small>'
        rows.append(
            f'<tr data-repository="{esc(repo.repository)}" data-unique-bytes="{repo.unique_bytes}" '
            f'data-images="{repo.images}" data-tags="{repo.tags}">'
            f'<td class="name">{esc(repo.repository)}</td><td class="r">{repo.images}</td><td class="r">{repo.tags}</td>'
            f'<td class="r">{_bytes(repo.unique_bytes)}{note}</td>'
            f'<td class="barcell"><div class="bar"><span style="width:{width:.1f}%"></span></div></td></tr>'
        )
    return (
        '<section id="repositories"><h2>Top repositories by unique bytes</h2>'
        '<p class="muted">Unique bytes: what deleting every image of the repository would free.</p>'
        '<table class="grid"><thead><tr><th>Repository</th><th class="r">Images</th><th class="r">Tags</th>'
        f'<th class="r">Unique</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


_RESULT_CLASS = {"success": "ok", "dry_run": "info", "partial": "warn", "failure": "bad"}


def _actions(actions: Sequence[ActionStatus], dry_run: bool, now: float, held: str = "") -> str:
    rows = []
    for a in actions:
        last = a.last_run
        if last is None:
            result, when, freed, deleted = '<span class="muted">never run</span>', _when(None, now), "-", "-"
        else:
            kind = str(last.get("result") or "failure")
            result = f'<span class="pill {_RESULT_CLASS.get(kind, "bad")}">{esc(kind.replace("_", " "))}</span>'
            if last.get("detail"):  # red only when something went wrong: "goal already met" is good news
                tone = "error" if kind in ("failure", "partial") else "muted"
                result += f' <small class="{tone}">{esc(str(last["detail"]))}</small>'
            when = _when(
                last.get("finished_at") or last.get("started_at"),
                now,
                metric="docker_remediation_last_run_timestamp_seconds",
            )
            freed = _bytes(
                int(last.get("reclaimed_bytes") or 0),
                "docker_remediation_last_run_reclaimed_bytes",
                f'action="{a.name}"',
            )
            deleted = _count(int(last.get("images_deleted") or 0))
        if a.running:
            result = '<span class="pill info">running</span> ' + result
        next_attr = f' data-next-run="{a.next_run!r}"' if a.next_run is not None else ""
        schedule = a.schedule or "on alert / manual"
        rows.append(
            f'<tr data-action="{esc(a.name)}"{next_attr}><td class="name">{esc(a.name)}</td><td>{esc(a.type)}</td>'
            f'<td>{result}</td><td>{when}</td><td class="r">{deleted}</td><td class="r">{freed}</td>'
            f"<td>{esc(schedule)}</td><td>{_when(a.next_run, now, future=True)}</td></tr>"
        )
    banner = '<p class="pill info">dry_run: true (runs only report what they would delete)</p>' if dry_run else ""
    return (
        f'<section id="remediation"><h2>Remediation</h2>{banner}'
        '<table class="grid"><thead><tr><th>Action</th><th>Type</th><th>Last result</th><th>Last run</th>'
        '<th class="r">Deleted</th><th class="r">Freed</th><th>Schedule</th><th>Next run</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{held}</section>"
    )


def _maturing(snapshot: Snapshot | None, config: RemediationConfig, now: float) -> str:
    """Per image action: how many images `min_age` alone holds back, how big, and when the first is free.

    On a first start every image counts as arriving then, so nothing is deletable for min_age: this says
    when that ends, before the operator has to ask.
    """
    if snapshot is None or snapshot.engine is None:
        return ""
    lines = []
    for name, action in sorted(config.actions.items()):
        found = maturing(snapshot, action, config.protect, now)
        if found is None or not found.images:
            continue
        first, last = found.images[0][1], found.images[-1][1]
        count = len(found.images)
        lines.append(
            f'<li data-action="{esc(name)}" data-images="{count}" data-bytes="{found.size}" data-first="{first!r}">'
            f"<b>{esc(name)}</b>: {count} image{'s' if count != 1 else ''} ({_bytes(found.size)}) become"
            f"{'s' if count == 1 else ''} deletable within the next min_age ({format_duration(found.min_age)}): "
            f"the first at {utc(first)} (in {rough_duration(first - now)})"
            f"{f', the last at {utc(last)} (in {rough_duration(last - now)})' if count > 1 else ''}</li>"
        )
    if not lines:
        return ""
    return (
        '<div id="maturing"><p>Held back by <code>min_age</code> only (counted from the latest of build, last tag '
        "and when the exporter first saw the image; on a first start that is every image):</p>"
        f"<ul>{''.join(lines)}</ul></div>"
    )


def _audit_summary(record: Mapping[str, Any]) -> str:
    """The part of an audit record people read first: what it was about and what happened."""
    if "unreadable" in record:
        return f'<span class="error">unreadable line:</span> <code>{esc(str(record["unreadable"])[:300])}</code>'
    parts = []
    refs = record.get("references")
    if isinstance(refs, list) and refs:
        parts.append(f"<code>{esc(', '.join(str(r) for r in refs))}</code>")
    elif record.get("image_id"):
        parts.append(f"<code>{esc(str(record['image_id'])[:19])}</code>")
    for key in ("result", "skip_reason"):
        if record.get(key):
            parts.append(esc(str(record[key])))
    for key in ("reclaimed_bytes", "size", "estimated_bytes"):
        if isinstance(record.get(key), int) and not isinstance(record.get(key), bool):
            parts.append(_bytes(record[key]))
            break
    for key in ("reason", "detail"):
        if record.get(key):
            parts.append(f'<small class="muted">{esc(str(record[key]))}</small>')
    return " ".join(parts)


def _audit(tail: AuditTail, now: float) -> str:
    rows = []
    for record in tail.records:
        ts = record.get("ts")
        when = _when(float(ts), now) if isinstance(ts, int | float) and not isinstance(ts, bool) else "-"
        dry = ' <small class="muted">(dry run)</small>' if record.get("dry_run") is True else ""
        rows.append(
            f'<tr class="audit"><td>{when}</td><td>{esc(str(record.get("action", "")))}</td>'
            f"<td>{esc(str(record.get('event', '')))}{dry}</td><td>{_audit_summary(record)}</td></tr>"
        )
    problem = f'<p class="error">{esc(tail.problem)}</p>' if tail.problem else ""
    table = (
        '<table class="grid"><thead><tr><th>When</th><th>Action</th><th>Event</th><th>What</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No audit entries yet.</p>'
    )
    return f'<section id="audit"><h2>Last audit entries</h2>{problem}{table}</section>'


_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f3f5f8}
header{background:#1d2b3a;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:18px}
header h1{font-size:20px;margin:0;font-weight:600}
header nav a{color:#b9d4f1;margin-right:14px;text-decoration:none}
main{padding:8px 28px 28px;max-width:1240px}
h2{font-size:17px;margin:26px 0 10px;color:#2b3a4b}
h3{font-size:13px;margin:0 0 6px;font-weight:600;color:#5b6878;text-transform:uppercase;letter-spacing:.04em}
section{margin-bottom:8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px}
.card{background:#fff;border:1px solid #dfe4ea;border-radius:8px;padding:14px 16px}
.card .big{font-size:24px;font-weight:600;margin-bottom:4px}
.card h3 code{text-transform:none;font-size:12px}
table{border-collapse:collapse}
table.kv th{text-align:left;padding:3px 18px 3px 0;color:#5b6878;font-weight:600}
table.grid{width:100%;background:#fff;border:1px solid #dfe4ea;border-radius:8px}
table.grid th,table.grid td{padding:6px 10px;border-bottom:1px solid #edf0f3;text-align:left;vertical-align:top}
table.grid th{background:#f7f9fb;font-size:13px;color:#5b6878}
.r{text-align:right!important;white-space:nowrap}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;word-break:break-all}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.bar{background:#e6ebf0;border-radius:4px;height:8px;overflow:hidden;margin-top:6px;min-width:80px}
.bar span{display:block;height:100%;background:#3d7dca}
.bar.full span{background:#c93c3c}
.barcell{width:22%}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#dcf3e3;color:#17643a}.bad{background:#fbe1e1;color:#9b1c1c}
.warn{background:#fdf1d6;color:#8a5a00}.info{background:#e1ecfa;color:#1f4f8a}
.muted{color:#7a8694}.error{color:#9b1c1c}
footer{color:#7a8694;font-size:12px;padding:0 28px 24px}
"""


def render_landing(
    *,
    telemetry_path: str,
    up: bool,
    snapshot: Snapshot | None,
    last_error: str | None,
    remediation: bool,
    docker_host: str,
    actions: Sequence[ActionStatus] = (),
    dry_run: bool = False,
    audit: AuditTail | None = None,
    refresh_seconds: int | None = None,
    now: float | None = None,
    events_live: bool | None = None,
    remediation_config: RemediationConfig | None = None,
) -> str:
    """The whole page; remediation sections only when `remediation` (then `actions` and `audit` fill them).

    `events_live`: `SnapshotStore.events_live` (None, no event follower: no row). `remediation_config`: its actions
    and protections say which images only `min_age` holds back, and until when."""
    now = time.time() if now is None else now
    links = [
        f'<a href="{esc(telemetry_path)}">Metrics</a>',
        '<a href="/-/healthy">Health</a>',
        '<a href="/-/ready">Readiness</a>',
    ]
    if remediation:
        links.append('<a href="/api/v1/actions" title="needs credentials">Remediation API</a>')
    sections = [_status(snapshot, up, last_error, docker_host, remediation, now, events_live)]
    if snapshot is not None and snapshot.engine is not None:
        sections += [_space(snapshot, now), _repositories(snapshot)]
    else:
        sections.append('<section id="space"><p class="muted">No snapshot of the engine yet.</p></section>')
    if remediation:
        held = _maturing(snapshot, remediation_config, now) if remediation_config is not None else ""
        sections.append(_actions(actions, dry_run, now, held))
        sections.append(_audit(audit or AuditTail(()), now))
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    refresh_note = (
        f"Refreshes every {int(refresh_seconds)}s."
        if refresh_seconds
        else "Add <code>?refresh=30</code> to refresh every 30s."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Docker Image Exporter</title>
<meta name="viewport" content="width=device-width,initial-scale=1">{refresh}
<style>{_CSS}</style></head>
<body><header><h1>Docker Image Exporter</h1><nav>{"".join(links)}</nav></header>
<main>
{"".join(sections)}
</main>
<footer>Numbers are the ones <a href="{esc(telemetry_path)}">{esc(telemetry_path)}</a> serves (hover a size for
exact bytes); this page never calls the engine. {refresh_note}</footer>
</body></html>
"""
