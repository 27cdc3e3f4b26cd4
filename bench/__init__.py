"""Benchmarks for Harvest: the synthetic image set, a local nginx, the baselines and the end-to-end run.

Not part of ``make test``; run ``make bench`` (or ``python -m bench.e2e --quick``).
"""
