"""Prometheus alert rules for docker-image-exporter, rendered from :mod:`alerts.render`.

A package so the dashboards generator, the Helm chart sync step and the end-to-end tests can import the
same thresholds instead of copying numbers around.
"""
