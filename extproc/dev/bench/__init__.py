"""Benchmarks run by `make bench` (numbers, not pass/fail tests)."""
