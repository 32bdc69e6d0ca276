"""perf-aggregator test suite (a package so that ``tests.support`` helpers import cleanly)."""
