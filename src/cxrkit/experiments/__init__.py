"""Experiments over several runs: side-by-side model comparison and hyper-parameter search."""
