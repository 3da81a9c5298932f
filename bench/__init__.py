"""Benchmark-only code: CUDA backends the engine does not ship (backends.py), stage breakdowns and sweeps that measure
the fast path. Run from the repository root: `python -m bench.breakdown ...` or `PYTHONPATH=. python bench/x.py`.
"""
