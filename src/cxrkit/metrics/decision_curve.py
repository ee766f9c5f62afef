"""Decision curve analysis (Vickers & Elkin 2006, doi:10.1177/0272989X06295361): is acting on the model better than
acting on everyone or on no one, across the threshold probabilities a clinician might hold?"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 0.991, 0.01), 2)


def net_benefit(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray = DEFAULT_THRESHOLDS, prevalence: float | None = None) -> dict:
    """Decision curve (Vickers & Elkin 2006): net benefit of treating when prob >= pt, for each threshold
    probability pt, with the treat-all and treat-none references. With ``prevalence`` the curve is computed
    for a population of that prevalence from the model's sensitivity and specificity (which do not depend on it)."""
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=np.float64)
    pi = float(y.mean()) if prevalence is None else float(prevalence)
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    odds = thresholds / (1 - thresholds)
    sens = np.array([(prob[y] >= t).sum() / pos for t in thresholds])
    fpr = np.array([(prob[~y] >= t).sum() / neg for t in thresholds])
    return {"thresholds": thresholds.tolist(), "prevalence": pi, "model": (sens * pi - fpr * (1 - pi) * odds).tolist(),
            "treat_all": (pi - (1 - pi) * odds).tolist(), "treat_none": [0.0] * len(thresholds)}
