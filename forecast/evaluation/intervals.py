"""Patient-level bootstrap intervals of the headline figures (AUC 28 d, ICI 28/56 d)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from forecast.evaluation.calibration import _ici
from forecast.evaluation.metrics import impute_times, td_auc, untied_times

#: Patient-level bootstrap replicates of the headline figures (``forecast evaluate --ci-reps``).
DEFAULT_CI_REPS = 100


def _patient_resampler(patients: Any, seed: int) -> Any:
    """A function returning the row indices of one patient-level bootstrap resample.

    Patients are drawn with replacement and each drawn patient brings all its
    rows (episodes of one patient are correlated), vectorised: no Python loop
    over patients.
    """
    codes = pd.factorize(np.asarray(patients, dtype=object))[0]
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        pick = rng.integers(0, len(starts), len(starts))
        n = counts[pick]
        first_out = np.cumsum(n) - n
        pos = np.arange(int(n.sum())) - np.repeat(first_out, n) + np.repeat(starts[pick], n)
        return order[pos]

    return draw



def headline_bootstrap(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray, patients: Any,
                       horizons: Sequence[int], oracle: np.ndarray | None = None, *,
                       reps: int = DEFAULT_CI_REPS, seed: int = 0, level: float = 0.95,
                       with_ici: bool = True) -> dict[str, Any] | None:
    """Percentile intervals of the headline figures over patient-level resamples.

    AUC(28), ICI(28) and ICI(56) of ``risk`` (and, with ``oracle``, the AUC(28)
    gap oracle - model, paired: both on the same resample). The out-of-fold
    predictions stay fixed, so the interval is the evaluation sample's
    uncertainty, not the refitting's. ICI is a mean absolute difference and
    its estimate is biased upward in small samples (the replicates' mean is
    reported too). None when ``reps`` is 0 or 28 days is not a horizon.
    ``with_ici=False`` skips the ICI intervals (a smoother fit per replicate).
    """
    horizons = [int(h) for h in horizons]
    if reps <= 0 or 28 not in horizons or len(lower) == 0:
        return None
    time, event = impute_times(lower, upper)
    cox_time = untied_times(lower, upper)[0]  # the published ICI's Cox fit, as in the metrics
    risk = np.asarray(risk, dtype=float)
    cols = {h: horizons.index(h) for h in (28, 56) if h in horizons}
    draw = _patient_resampler(patients, seed)
    reps_out: dict[str, list[float]] = {"auc28": []}
    if with_ici:
        reps_out.update(ici28=[], ici56=[])
    if oracle is not None:
        reps_out["auc28_gap_to_oracle"] = []
    j28 = cols[28]
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(reps)):
            idx = draw()
            t, e = time[idx], event[idx]
            auc = float(td_auc(t, e, risk[idx][:, [j28]], [28])[0])
            reps_out["auc28"].append(auc)
            if oracle is not None:
                reps_out["auc28_gap_to_oracle"].append(
                    float(td_auc(t, e, np.asarray(oracle)[idx][:, [j28]], [28])[0]) - auc)
            for h in (28, 56):
                if with_ici and h in cols:
                    reps_out[f"ici{h}"].append(_ici(cox_time[idx], e, risk[idx, cols[h]], h))
    a = (1.0 - level) / 2.0
    out: dict[str, Any] = {"reps": int(reps), "level": level, "seed": seed, "unit": "patient",
                           "note": "percentile intervals over patient-level resamples of the "
                                   "out-of-fold predictions (not refitted)"}
    for k, v in reps_out.items():
        arr = np.asarray(v, dtype=float)
        arr = arr[np.isfinite(arr)]
        if len(arr) >= max(10, reps // 2):
            out[k] = [float(np.quantile(arr, a)), float(np.quantile(arr, 1.0 - a))]
            out[f"{k}_replicate_mean"] = float(arr.mean())
    return out

