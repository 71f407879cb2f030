"""Two registry versions on the same holdout: paired differences with bootstrap intervals.

Both versions forecast the same episodes at the first forecast point (the
response assessment, as in :func:`forecast.evaluation.evaluate_bundle`); each
patient-level bootstrap resample scores both on the same rows, so the
interval is of the paired difference (B minus A). The suggested next dates of
both at one as-of date are compared patient by patient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from forecast.evaluation.calibration import _ici
from forecast.evaluation.crossval import forecast_point_risk
from forecast.evaluation.intervals import _patient_resampler
from forecast.evaluation.metrics import brier, impute_times, td_auc
from forecast.training import forecast_point_dataset

MOVE_DAYS = 7


def _scores(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray,
            horizons: list[int]) -> np.ndarray:
    """(3, len(horizons)): AUC, Brier and ICI per horizon."""
    time, event = impute_times(lower, upper)
    auc = td_auc(time, event, risk, horizons)
    bs = brier(time, event, risk, horizons)[0]
    ici = np.array([_ici(time, event, risk[:, j], h) for j, h in enumerate(horizons)])
    return np.vstack([auc, bs, ici])


def _suggestions(cohort: Any, model: Any, as_of: pd.Timestamp) -> pd.Series:
    from forecast.policy import forecast_cohort, forecast_rows

    rows = forecast_rows(forecast_cohort(cohort, model, as_of))
    return pd.to_datetime(rows.set_index("patient_id")["suggested_date"], errors="coerce")


def compare_versions(cohort: Any, a: Any, b: Any, *, reps: int = 200, seed: int = 0,
                     as_of: Any = None, progress: Any = None) -> dict[str, Any]:
    """Paired comparison of the loaded versions ``a`` and ``b`` on ``cohort``.

    Raises ``ValueError`` when the versions define the outcome differently
    (their episodes would differ) or the cohort has no forecast point.
    """
    from forecast.registry import RegistryError

    if a.definition.to_dict() != b.definition.to_dict():
        raise RegistryError(f"{a.version} and {b.version} use different outcome definitions; "
                            "their episodes differ and cannot be compared row by row")
    horizons = [int(h) for h in a.bundle.horizons if h in set(b.bundle.horizons)]
    fp = forecast_point_dataset(cohort, a.definition)
    if len(fp) == 0 or not horizons:
        raise RegistryError("the holdout has no episode at a first forecast point (or the "
                            "versions share no horizon): nothing to compare")
    h = np.asarray(horizons, float)
    pa, pb = forecast_point_risk(a.bundle, fp, h), forecast_point_risk(b.bundle, fp, h)
    ok = np.all(np.isfinite(pa), axis=1) & np.all(np.isfinite(pb), axis=1)
    lo, up = fp["lower"].to_numpy(float)[ok], fp["upper"].to_numpy(float)[ok]
    pa, pb = pa[ok], pb[ok]
    patients = fp["patient_id"].to_numpy(object)[ok]
    step = (lambda: None) if progress is None else progress.update
    point = _scores(lo, up, pb, horizons) - _scores(lo, up, pa, horizons)
    step()
    draws = []
    draw = _patient_resampler(patients, seed)
    for _ in range(int(reps)):
        idx = draw()
        with np.errstate(all="ignore"):
            draws.append(_scores(lo[idx], up[idx], pb[idx], horizons)
                         - _scores(lo[idx], up[idx], pa[idx], horizons))
        step()
    stack = np.array(draws) if draws else np.full((0, *point.shape), np.nan)
    by_h: dict[str, Any] = {}
    for j, hz in enumerate(horizons):
        row = {}
        for k, name in enumerate(("auc", "brier", "ici")):
            vals = stack[:, k, j] if len(stack) else np.array([])
            vals = vals[np.isfinite(vals)]
            row[name] = {
                "diff": float(point[k, j]) if np.isfinite(point[k, j]) else None,
                "lower": float(np.quantile(vals, 0.025)) if len(vals) >= 10 else None,
                "upper": float(np.quantile(vals, 0.975)) if len(vals) >= 10 else None,
            }
        by_h[str(hz)] = row
    day = (pd.Timestamp(as_of) if as_of is not None
           else pd.Timestamp(cohort.assessments["date"].max())).normalize()
    sa, sb = _suggestions(cohort, a, day), _suggestions(cohort, b, day)
    step()
    sb = sb.reindex(sa.index)
    both = sa.notna() & sb.notna()
    moved = int(((sb[both] - sa[both]).abs() > pd.Timedelta(days=MOVE_DAYS)).sum())
    return {
        "a": a.version,
        "b": b.version,
        "difference": "b minus a",
        "n_patients": int(pd.unique(patients).size),
        "n_episodes": int(ok.sum()),
        "reps": int(reps),
        "level": 0.95,
        "by_horizon": by_h,
        "suggested_dates": {
            "as_of": str(day.date()),
            "patients": int(len(sa)),
            "with_suggestion_in_both": int(both.sum()),
            "moved_over_7_days": moved,
            "gained_or_lost": int((sa.notna() != sb.notna()).sum()),
        },
    }
