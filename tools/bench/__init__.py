"""Benchmarks of tickbus, run by hand (not tests): ``python -m tickbus.tools.bench.<name>``."""
