"""Plausibility of a model on load: its risks for a small built-in synthetic reference set.

A version whose files verify and whose signature holds may still predict
nonsense (a baseline hazard rewritten before signing, a numerical failure
in training). Before the service serves a version it forecasts
:data:`REFERENCE_PATIENTS` simulated patients (fixed seed, built in; no
clinic data) at a few dates through the same path as every request and
refuses the version when the personalised risks are not finite, not in
[0, 1], fall with the horizon, or average outside the bounds below at the
shortest and longest horizons. See docs/registry.md, "Plausibility check".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_PATIENTS = 60
REFERENCE_SEED = 20261201
#: the mean risk at the longest horizon must reach this (an all-zero model fails)
MIN_MEAN_RISK_LONGEST = 0.05
#: the mean risk at the shortest horizon must stay below this (an all-one model fails)
MAX_MEAN_RISK_SHORTEST = 0.95
MIN_ANSWERS = 10


class ImplausibleModel(ValueError):
    """The model's risks on the reference set are out of bounds."""


@lru_cache(maxsize=1)
def _reference() -> tuple[Any, pd.DataFrame]:
    from forecast.simulation import simulate

    cohort = simulate(REFERENCE_PATIENTS, REFERENCE_SEED).cohort
    dates = cohort.assessments["date"]
    lo, hi = dates.min(), dates.max()
    as_of = [lo + (hi - lo) * q for q in (0.4, 0.6, 0.8)]
    ids = cohort.patients["patient_id"].astype(str).to_numpy()
    queries = pd.DataFrame({
        "patient_id": np.tile(ids, len(as_of)),
        "as_of": np.repeat([pd.Timestamp(d).normalize() for d in as_of], len(ids)),
    })
    return cohort, queries


def _with_covariates(cohort: Any, covariates: tuple[str, ...]) -> Any:
    if not covariates:
        return cohort
    from forecast.cohort import Cohort

    patients = cohort.patients.copy()
    for name in covariates:
        patients[name] = np.nan  # missing: the model's missing indicator carries it
    return Cohort(patients, cohort.sessions, cohort.assessments, covariates=covariates)


def reference_risks(model: Any) -> np.ndarray:
    """Personalised risks (rows: answers, columns: the model's horizons) on the reference set."""
    from forecast.policy import forecast_queries

    cohort, queries = _reference()
    cohort = _with_covariates(cohort, tuple(getattr(model, "covariates", ()) or ()))
    answers = forecast_queries(cohort, model, queries)
    rows = []
    for a in answers:
        risk = a.get("risk") or {}
        if risk.get("kind") != "personalised":
            continue
        rows.append([np.nan if h.get("risk") is None else float(h["risk"])
                     for h in risk.get("horizons", [])])
    width = max((len(r) for r in rows), default=0)
    return np.array([r for r in rows if len(r) == width], dtype=float).reshape(-1, width)


def check(model: Any) -> dict[str, Any]:
    """Raise :class:`ImplausibleModel` when the reference risks are out of bounds.

    Returns the figures checked (number of answers, mean risk per horizon).
    """
    risks = reference_risks(model)
    version = getattr(model, "version", "?")
    if len(risks) < MIN_ANSWERS or risks.shape[1] == 0:
        raise ImplausibleModel(f"version {version} gave {len(risks)} personalised forecasts "
                               f"for the {REFERENCE_PATIENTS} reference patients "
                               f"(at least {MIN_ANSWERS} expected)")
    if not np.isfinite(risks).all() or (risks < 0).any() or (risks > 1).any():
        raise ImplausibleModel(f"version {version} gives risks that are not numbers in [0, 1]")
    if (np.diff(risks, axis=1) < -1e-3).any():
        raise ImplausibleModel(f"version {version} gives risks that fall with the horizon")
    mean = risks.mean(axis=0)
    if mean[-1] < MIN_MEAN_RISK_LONGEST:
        raise ImplausibleModel(
            f"version {version}: mean risk at the longest horizon is {mean[-1]:.4f} on the "
            f"reference set (at least {MIN_MEAN_RISK_LONGEST} expected): it predicts nonsense")
    if mean[0] > MAX_MEAN_RISK_SHORTEST:
        raise ImplausibleModel(
            f"version {version}: mean risk at the shortest horizon is {mean[0]:.4f} on the "
            f"reference set (at most {MAX_MEAN_RISK_SHORTEST} expected): it predicts nonsense")
    return {"answers": int(len(risks)), "mean_risk": [round(float(m), 4) for m in mean]}
