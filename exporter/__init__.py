"""docker-image-exporter: Prometheus metrics for Docker images, and safe alert-driven pruning."""

__version__ = "0.1.0"
