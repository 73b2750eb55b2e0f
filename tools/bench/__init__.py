"""Benchmarks of tickbus, run by hand (not tests): ``python -m tools.bench.<name>``."""
