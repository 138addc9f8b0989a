"""Benchmarks for mediasan: run with ``bench/run`` (not part of the test suite)."""
