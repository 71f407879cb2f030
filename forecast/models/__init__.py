"""Survival estimators of benefit waning, with scikit-learn conventions.

Every estimator wraps a lifelines fitter (or a vectorised fit checked against
one) behind one interface: ``__init__`` only stores parameters; ``fit(X, lower, upper,
groups=None)`` validates, sets ``*_`` attributes and returns ``self``; every
other method calls ``check_is_fitted`` first; randomness only through
``random_state``. ``X`` is a feature frame (``forecast.features``), ``lower``
and ``upper`` bound the event time in days: the event lies in
``(lower, upper]``, ``upper = inf`` when right-censored at ``lower``.

Kinds (``forecast train --kind``):

``km``
    Population baseline without covariates: Turnbull's NPMLE for interval
    censoring (lifelines ``KaplanMeierFitter.fit_interval_censoring``).
``cox``
    Static Cox PH from the episode start (lifelines ``CoxPHFitter``, Breslow
    baseline, L2 penalty). lifelines' semi-parametric Cox does not do interval
    censoring, so an interval-censored event is placed at the **midpoint** of
    its interval and a right-censored episode at its last event-free
    assessment. The midpoint is unbiased for an event uniformly distributed
    inside the visit gap, whereas the right endpoint would delay every event
    by half a visit interval and inflate the baseline survival; the ranking
    used by the partial likelihood is almost the same either way. (The
    spline-baseline Cox that lifelines offers for intervals can return
    all-zero coefficients silently, so it is not used.)
``weibull``, ``lognormal``, ``loglogistic``
    Static parametric AFT models from the episode start, fitted with true
    interval censoring (lifelines ``*AFTFitter.fit_interval_censoring``).
``landmark``
    A parametric AFT fitted with interval censoring on the stacked
    super-landmark dataset (features at landmark ``s``, residual time from
    ``s``), so that the risk at an as-of date is ``P(residual <= h | features
    at as-of)``. The AFT family is chosen by a held-out Brier score
    (patient-grouped 2-fold split of at most ``select_max_groups`` patients;
    ``selection="aic"`` uses AIC instead).
``dynamic``
    The same rows on the episode's own clock, left-truncated at the last
    assessment without waning (:class:`DynamicAFT`).
``piecewise`` (default)
    The same rows on the clock that starts at each row's last assessment
    without waning: a piecewise-exponential hazard whose covariate effects
    may differ by window (:class:`PiecewiseExponentialModel`), fitted by Newton's method
    with the exact Hessian. The default for its calibration at 56 days and
    on a foreign generator (see docs/models.md).

Landmark rows of one episode (and the episodes of one patient) are
correlated: the point estimates of the landmark kinds are those of a working
independence model, which is consistent, but model-based standard errors are
too small; uncertainty therefore comes from a patient-level bootstrap.

Preprocessing (all kinds with covariates): numeric features standardised with
the training mean and SD (NaN imputed by the mean), categorical features
one-hot over the fixed levels of ``FEATURES`` minus the most frequent level
and centred; an unseen or missing category encodes to the average effect
(see :class:`forecast.bundle.Encoder`). A small L2 penalty (``penalizer``)
keeps the fit stable. An event at an exact time ``t`` (``lower == upper``) is
read as "during day ``t``", i.e. the interval ``(t - 1, t]``, because dates
have day resolution. A lower bound of 0 (possible for landmark rows: the event
may already have happened unseen) is replaced by 0.001 days so that log-time
models stay finite; ``S(0.001)`` equals 1 to many digits.

Convergence is checked after every fit (finite log-likelihood, finite
parameters, finite positive standard errors, coefficients not all zero) and a
failure raises :class:`ModelFitError` instead of returning a silent bad fit.

Modules: :mod:`~forecast.models.base` (the common estimator interface and its
helpers), :mod:`~forecast.models.nonparametric` (Kaplan-Meier/Turnbull),
:mod:`~forecast.models.cox`, :mod:`~forecast.models.aft` (static AFT kinds),
:mod:`~forecast.models.landmark` (landmark and dynamic kinds),
:mod:`~forecast.models.piecewise` and :mod:`~forecast.models.kinds` (kind ->
estimator).
"""

from __future__ import annotations

from typing import Any

from forecast.bundle import DEFAULT_KIND
from forecast.models import aft
from forecast.models.aft import (
    AFTEstimator,
    LogLogisticAFT,
    LogNormalAFT,
    WeibullAFT,
    aft_objective,
)
from forecast.models.base import (
    DEFAULT_PENALIZER,
    MIN_LOWER,
    PENALIZER_GRID,
    FeatureSet,
    ModelFitError,
    SurvivalEstimator,
    check_bounds,
    default_features,
)
from forecast.models.cox import CoxFit, CoxPH, cox_efron
from forecast.models.kinds import ESTIMATORS, make_estimator
from forecast.models.landmark import DynamicAFT, LandmarkAFT, varying_within
from forecast.models.nonparametric import KaplanMeier, km_risk, turnbull_risk, turnbull_survival
from forecast.models.piecewise import (
    PIECEWISE_EDGES,
    PIECEWISE_PENALIZER,
    PIECEWISE_PENALTY_SCALE,
    PIECEWISE_WINDOW_PENALIZER,
    PiecewiseExponentialModel,
    pwe_hessian,
    pwe_objective,
)

__all__ = [
    "DEFAULT_KIND",
    "DEFAULT_PENALIZER",
    "ESTIMATORS",
    "MIN_LOWER",
    "PENALIZER_GRID",
    "PIECEWISE_EDGES",
    "PIECEWISE_PENALIZER",
    "PIECEWISE_PENALTY_SCALE",
    "PIECEWISE_WINDOW_PENALIZER",
    "AFTEstimator",
    "CoxFit",
    "CoxPH",
    "DynamicAFT",
    "FeatureSet",
    "KaplanMeier",
    "LandmarkAFT",
    "LogLogisticAFT",
    "LogNormalAFT",
    "ModelFitError",
    "PiecewiseExponentialModel",
    "SurvivalEstimator",
    "WeibullAFT",
    "aft_objective",
    "check_bounds",
    "cox_efron",
    "default_features",
    "km_risk",
    "make_estimator",
    "pwe_hessian",
    "pwe_objective",
    "turnbull_risk",
    "turnbull_survival",
    "varying_within",
]


def __getattr__(name: str) -> Any:
    """``forecast.models.Seeded*``: the seeded lifelines fitters, made on first use in
    :mod:`forecast.models.aft`, resolved under this package's name as well."""
    if name.startswith("Seeded"):
        return getattr(aft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
