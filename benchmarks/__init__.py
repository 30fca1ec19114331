"""Corral's benchmark suite: ``make bench`` or ``python -m benchmarks.run`` (see run.py)."""
