"""The fleet test (`make test-fleet`): many exporters on private engines behind one Prometheus and an HA
Alertmanager pair. Not part of `make test`: it needs minutes and most of the machine."""
