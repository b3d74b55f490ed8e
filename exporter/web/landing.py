"""The landing page at `/`: what this exporter is, which engine it sees, and where everything lives."""

from __future__ import annotations

import html
import time

from exporter import __revision__, __version__
from exporter.hints import engine_error_hint
from exporter.snapshot import Snapshot
from exporter.units import format_duration


def render_landing(
    *,
    telemetry_path: str,
    up: bool,
    snapshot: Snapshot | None,
    last_error: str | None,
    remediation: bool,
    docker_host: str,
) -> str:
    esc = html.escape
    if snapshot is not None and snapshot.engine is not None:
        e = snapshot.engine
        engine = (
            f"Docker {esc(e.version)} (API {esc(e.api_version)}, {esc(e.storage_driver)}, {esc(e.os)}/{esc(e.arch)})"
        )
        age = format_duration(max(time.time() - snapshot.taken_at, 0))
        poll = f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(snapshot.taken_at))} ({age} ago)"
        images = f"{len(snapshot.images)} images, {len(snapshot.dangling)} dangling"
    else:
        engine, poll, images = "not reached yet", "none yet", "unknown"
    status = "up" if up else "DOWN"
    error = ""
    if last_error:
        error = f"<tr><th>Last error</th><td>{esc(last_error)}</td></tr>"
        hint = engine_error_hint(last_error)
        if hint:
            error += f"<tr><th>What to do</th><td>{esc(hint)}</td></tr>"
    links = [f'<li><a href="{esc(telemetry_path)}">Metrics</a></li>']
    links += ['<li><a href="/-/healthy">Health</a></li>', '<li><a href="/-/ready">Readiness</a></li>']
    if remediation:
        links.append('<li><a href="/api/v1/actions">Remediation runs</a> (needs credentials)</li>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Docker Image Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>Docker Image Exporter</h1>
<table>
<tr><th>Version</th><td>{esc(__version__)} (revision {esc(__revision__)})</td></tr>
<tr><th>Engine</th><td>{engine} at {esc(docker_host)}: <b>{status}</b></td></tr>
<tr><th>Last poll</th><td>{poll}</td></tr>
<tr><th>Images</th><td>{images}</td></tr>
<tr><th>Remediation</th><td>{"enabled" if remediation else "disabled"}</td></tr>
{error}
</table>
<ul>{"".join(links)}</ul>
</body></html>
"""
