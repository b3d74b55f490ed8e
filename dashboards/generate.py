"""Generate the Grafana dashboards (``python -m dashboards.generate`` / ``make dashboards``).

Why generated: ~40 panels that must all carry the datasource variable, the job/instance filters, a unit
and a description are easy to get subtly wrong by hand, and the alert thresholds drawn on the filesystem
panels must equal the ones in ``alerts/render.py``. Plain dicts keep the generator free of dependencies.
``tests/unit/test_dashboards.py`` fails when the committed JSON drifts from this module's output, checks
every panel, and runs every query with Prometheus's engine.

Layout of the package: :mod:`dashboards.model` (panels as data, the ``sel`` filter helper),
:mod:`dashboards.panels` (builders shared by the dashboards), one module per dashboard
(:mod:`dashboards.images`, :mod:`dashboards.remediation`), :mod:`dashboards.grafana` (the JSON model),
and this entry point.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dashboards import images, remediation
from dashboards.grafana import render
from dashboards.model import Dashboard

DASHBOARD_DIR = Path(__file__).resolve().parent
IMAGES_UID = images.UID
REMEDIATION_UID = remediation.UID

#: File name under ``dashboards/`` -> the function building that dashboard.
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "docker-images.json": images.images_dashboard,
    "docker-remediation.json": remediation.remediation_dashboard,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed under ``dashboards/``."""
    return {
        name: json.dumps(render(build()), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write every dashboard into ``dashboards/`` (or the directory given as the only argument)."""
    args = list(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args[0]) if args else DASHBOARD_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
