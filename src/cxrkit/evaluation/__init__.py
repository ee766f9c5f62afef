"""Evaluation: metrics with confidence intervals, threshold choice on validation data, plots."""
