"""Benchmarks: `python -m ssljax.bench step|pipeline` (see __main__)."""
