"""Workflows on a run folder: evaluate a split (metrics, plots, report), calibrate, measure inference speed."""
