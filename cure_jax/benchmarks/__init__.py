"""Benchmarks: ratios of costs measured in one run (never timed tests)."""
