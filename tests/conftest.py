"""Test-suite wiring: the harness fixtures and hooks live in tests/harness/fixtures.py.

Importing them as a plugin (rather than defining them here) lets benchmarks and the engine matrix reuse the
harness without pytest's conftest discovery.
"""

pytest_plugins = ["tests.harness.fixtures"]
