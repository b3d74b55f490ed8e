"""docker-image-exporter: Prometheus metrics for Docker images, and safe alert-driven pruning."""

import importlib

__version__ = "0.1.0"


def _build_info() -> tuple[str, str]:
    """(revision, build date) baked into wheels by setup.py; "unknown" in a source checkout or editable install."""
    try:
        build = importlib.import_module("exporter._build")
    except ImportError:
        return "unknown", "unknown"
    return str(getattr(build, "REVISION", "unknown")), str(getattr(build, "BUILD_DATE", "unknown"))


__revision__, __build_date__ = _build_info()
