"""Small HTML pages served by the exporter."""
