"""Private engines, generated images, a registry and the exporter process: real parts for tests."""
