"""Snapshots into metrics: the collector, the exporter's own metrics, the rendered text of a snapshot."""
