"""Decision curve analysis (Vickers & Elkin 2006, doi:10.1177/0272989X06295361): is acting on the model better than
acting on everyone or on no one, across the threshold probabilities a clinician might hold?"""

from __future__ import annotations

import numpy as np

from cxrkit.metrics.inputs import binary_pair, unit_number

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 0.991, 0.01), 2)


def net_benefit(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray = DEFAULT_THRESHOLDS, prevalence: float | None = None) -> dict:
    """Decision curve (Vickers & Elkin 2006): net benefit of treating when prob >= pt, for each threshold
    probability pt, with the treat-all and treat-none references. With ``prevalence`` the curve is computed
    for a population of that prevalence from the model's sensitivity and specificity (which do not depend on it)."""
    y, prob = binary_pair(y, prob)
    y = y.astype(bool)
    if not len(y):
        raise ValueError("no images: a decision curve needs labelled images")
    thresholds = np.asarray(thresholds, dtype=np.float64)  # a list was a TypeError
    if thresholds.ndim != 1 or not np.all((thresholds > 0) & (thresholds < 1)):  # at pt = 1 the odds are infinite: NaN
        raise ValueError("decision-curve thresholds must be numbers strictly between 0 and 1")
    if prevalence is not None:
        unit_number(prevalence, "prevalence", low_open=True, high_open=True)  # 5 gave net benefits above 5
    pi = float(y.mean()) if prevalence is None else float(prevalence)
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    odds = thresholds / (1 - thresholds)
    sens = np.array([(prob[y] >= t).sum() / pos for t in thresholds])
    fpr = np.array([(prob[~y] >= t).sum() / neg for t in thresholds])
    return {"thresholds": thresholds.tolist(), "prevalence": pi, "model": (sens * pi - fpr * (1 - pi) * odds).tolist(),
            "treat_all": (pi - (1 - pi) * odds).tolist(), "treat_none": [0.0] * len(thresholds)}
