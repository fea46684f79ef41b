"""Microbenchmarks of lorenza: every figure beside its baseline, measured in the same run."""
