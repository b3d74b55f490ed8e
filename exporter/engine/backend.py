"""The one place that chooses the engine backend: a Docker-API engine, or a CRI runtime (`runtime.endpoint`).

The backends are imported inside `open_engine`: the CLI imports this module, and `--config.check` stays free of
the docker SDK and gRPC.
"""

from __future__ import annotations

from exporter.config import Config
from exporter.engine.seam import EngineSeam


class BackendUnavailable(Exception):
    """The chosen backend's optional dependencies are not installed."""


def open_engine(config: Config, docker_host: str | None, runtime_endpoint: str | None) -> EngineSeam:
    """The engine client for this process; the CRI backend is imported only when chosen (gRPC is an extra)."""
    if runtime_endpoint is None:
        from exporter.engine.client import Engine

        return Engine(
            docker_host,
            config.docker.timeout,
            config.docker.disk_usage_timeout,
            max_response_bytes=config.docker.max_response_bytes,
        )
    try:
        from exporter.engine.cri.client import CriEngine
    except ImportError as exc:
        raise BackendUnavailable(
            f"--runtime.endpoint needs the CRI extra: pip install 'prometheus-docker-image-exporter[cri]' ({exc})"
        ) from None
    return CriEngine(runtime_endpoint, config.runtime.timeout)
