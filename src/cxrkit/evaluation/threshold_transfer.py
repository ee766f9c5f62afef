"""Does the validation-chosen threshold hold on another site? Sensitivity and specificity there against validation.

A model's ranking can travel to a new hospital while its operating point does not: the 500-image TB default
keeps a ROC-AUC of 0.755 on Sakha-TB, yet at its validation threshold it finds 27% of the TB cases there, against
81% on validation (BENCHMARKS.md, round 7). The AUC alone hides that, so an external evaluation compares the two
rates with Fisher's exact test on the counts (on each side's effective number of cases where patients have several
images) and says in words when a rate moved.
"""

from __future__ import annotations

from typing import Any

# A rate that moves by less than this is not called a failure, however large the sets (clinically small).
MIN_CHANGE = 0.10
ALPHA = 0.05
RATES = ("sensitivity", "specificity")


def threshold_transfer(validation: dict[str, Any] | None, here: dict[str, Any], recalibrate: str = "cxrkit evaluate RUN DATA --recalibrate-on SAMPLE_DIR",
                       ) -> dict[str, Any] | None:
    """Compare sensitivity and specificity of a binary evaluation with the run's validation figures at the same threshold.

    ``validation`` and ``here`` are the ``metrics.json`` entries of the validation split and of the evaluated data.
    Returns None when there is nothing to compare (not binary, another threshold, a rate without cases on either side).
    ``recalibrate`` is the command the message suggests.
    """
    from scipy.stats import fisher_exact

    if not validation or validation.get("task") != "binary" or here.get("task") != "binary":
        return None
    if validation.get("threshold") is None or here.get("threshold") is None or abs(validation["threshold"] - here["threshold"]) > 1e-9:
        return None  # the run's threshold changed since validation was scored (e.g. calibrated without re-scoring)
    rates: dict[str, Any] = {}
    for name in RATES:
        v, h = validation["metrics"].get(name), here["metrics"].get(name)
        if not v or not h or not v.get("denominator") or not h.get("denominator"):
            continue
        table = [[v["numerator"], v["denominator"] - v["numerator"]], [h["numerator"], h["denominator"] - h["numerator"]]]
        p = float(fisher_exact(table)[1])
        if v.get("effective_n") or h.get("effective_n"):
            # Several films per patient: the counts shrunk to each side's effective number of cases (its design effect), and
            # never a smaller p than the films give; counted as films, repeat images made a moved rate look certain.
            def shrunk(e: dict) -> list[int]:
                n_eff = e.get("effective_n") or e["denominator"]
                hits = round(e["value"] * n_eff)
                return [hits, max(round(n_eff) - hits, 0)]
            p = max(p, float(fisher_exact([shrunk(v), shrunk(h)])[1]))
        change = h["value"] - v["value"]
        rates[name] = {"validation": v["value"], "here": h["value"], "counts_validation": [v["numerator"], v["denominator"]],
                       "counts_here": [h["numerator"], h["denominator"]], "change": change, "p_value": p,
                       "moved": bool(p < ALPHA and abs(change) >= MIN_CHANGE)}
    if not rates:
        return None
    moved = [n for n, r in rates.items() if r["moved"]]
    return {"threshold": here["threshold"], "rates": rates, "holds": not moved, "message": _message(here["threshold"], rates, moved, recalibrate)}


def _message(threshold: float, rates: dict[str, Any], moved: list[str], recalibrate: str) -> str:
    """One sentence a reader acts on."""
    if not moved:
        return (f"the validation-chosen threshold ({threshold:.3f}) holds here: sensitivity and specificity are within what chance "
                f"explains (Fisher p >= {ALPHA}) or within {MIN_CHANGE:.0%} of validation")
    parts = []
    for n in moved:
        r = rates[n]
        (a, b), (c, d) = r["counts_here"], r["counts_validation"]
        parts.append(f"{n} {r['here']:.1%} ({a} of {b}) against {r['validation']:.1%} ({c} of {d}) on validation, Fisher p {r['p_value']:.2g}")
    return (f"the validation-chosen threshold ({threshold:.3f}) does not hold here: " + "; ".join(parts) + ". The ROC-AUC says how "
            "well the model still ranks these images; re-choose the threshold on a labelled sample of this site "
            f"(`{recalibrate}`) before using its decisions here")
