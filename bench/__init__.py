"""The evaluator's benchmark: `python -m bench` (see bench/run.py and bench/RESULTS.md)."""
