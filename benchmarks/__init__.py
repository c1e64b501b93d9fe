"""Benchmarks of medfm, run by hand (``python -m benchmarks.<name>``); not part of pytest."""
