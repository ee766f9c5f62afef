"""Metric maths on labels and scores: no run folders, no models, no files.

Classification metrics with confidence intervals, DeLong and Wilson intervals, threshold rules,
operating points, decision curves and probability calibration. Workflows (:mod:`cxrkit.evaluation`,
:mod:`cxrkit.training`) and the audit build on these.
"""
