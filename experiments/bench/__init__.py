"""Benchmarks: each script prints a table of pilot vs the reference, measured in one process."""
