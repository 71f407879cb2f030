"""The estimator class of each ``--kind`` and :func:`make_estimator`."""

from __future__ import annotations

from typing import Any

from forecast.bundle import KINDS
from forecast.models.aft import LogLogisticAFT, LogNormalAFT, WeibullAFT
from forecast.models.base import SurvivalEstimator
from forecast.models.cox import CoxPH
from forecast.models.landmark import DynamicAFT, LandmarkAFT
from forecast.models.nonparametric import KaplanMeier
from forecast.models.piecewise import PiecewiseExponentialModel

ESTIMATORS: dict[str, type[SurvivalEstimator]] = {
    "km": KaplanMeier,
    "cox": CoxPH,
    "weibull": WeibullAFT,
    "lognormal": LogNormalAFT,
    "loglogistic": LogLogisticAFT,
    "landmark": LandmarkAFT,
    "dynamic": DynamicAFT,
    "piecewise": PiecewiseExponentialModel,
}
assert tuple(ESTIMATORS) == KINDS


def make_estimator(kind: str, **params: Any) -> SurvivalEstimator:
    """Build the estimator of ``kind`` (see module notes) with ``params``."""
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[kind](**params)

