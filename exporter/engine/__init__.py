"""Talking to the engine: the client (the only user of the docker SDK), launch reads, answer shapes, error hints."""
