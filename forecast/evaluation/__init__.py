"""Evaluation of waning-risk models: grouped cross-validation, metrics, fairness, oracle.

What is evaluated
-----------------
- **At episode start** (landmark 0): every model predicts the risk that the
  benefit has waned within h days of the episode's start, for h in the
  contract horizons. This is comparable across the dynamic model (features
  at the start), the static models and the simulator's oracle (truth.csv
  gives the true risk at the start of each episode).
- **Landmark-conditional** (dynamic model only): every landmark row of the
  test patients, risk of waning within h days after the landmark given the
  features at the landmark. Rows of one episode are correlated; the metrics
  are pooled point estimates.

Cross-validation is patient-grouped K-fold (seeded shuffle of patients, never
one patient on both sides); each fold refits the model spec of the evaluated
version with the same settings and the baselines (KM, static Cox), and
out-of-fold predictions of all folds are pooled before computing metrics.

Interval-censored outcomes and right-censored metric functions
--------------------------------------------------------------
The metric functions of scikit-survival and lifelines want one time and an
event flag. An event known to lie in ``(lower, upper]`` is placed at the
**midpoint** (unbiased for an event uniform within the visit gap); a
right-censored episode is censored at ``lower`` (its last event-free
assessment). As a cross-check each horizon also reports the
*interval-aware* status: waned by h is known when ``upper <= h``, not waned
when ``lower >= h``, unknown otherwise; ``share_known`` and the AUC on the
rows with a known status (``auc_known``) are reported next to the IPCW AUC,
and calibration-in-the-large uses the Turnbull estimate, which needs no
imputation.

Metrics
-------
Harrell's C (lifelines ``concordance_index`` on the risk at 28 days, negated
because it wants higher = longer survival), Uno's C (scikit-survival
``concordance_index_ipcw``, tau = the longest horizon), time-dependent AUC
(``cumulative_dynamic_auc``) and Brier score (``brier_score``) at each
horizon, the integrated Brier score over the horizons (``integrated_brier_score``,
trapezoid over 7..84 days), and per horizon calibration: ICI, E50 and E90
(Austin, Harrell & van Klaveren 2020, as published: ICI is the mean absolute
difference between predicted and smoothed observed risk, the observed risk
from a Cox model of the whole follow-up on a 3-knot restricted cubic spline
of ``log(-log(1 - predicted risk))``, fitted by :func:`cox_efron`;
two labelled variants beside it: ``ici_pseudo`` regresses Kaplan-Meier
pseudo-observations at the horizon on the spline, ``ici_austin`` censors the
follow-up at the horizon before the Cox fit; see :func:`calibration`),
calibration-in-the-large (Turnbull observed risk minus mean predicted risk)
and a decile calibration plot (Kaplan-Meier observed risk per decile of
predicted risk). The same metrics are reported by
sex, age band and diagnosis (fairness).

Modules: :mod:`~forecast.evaluation.metrics` (outcome conversions, C-indices,
time-dependent AUC, Brier/IBS, the metric set of one prediction, fairness),
:mod:`~forecast.evaluation.calibration` (ICI, calibration slope and in the
large, calibration curves, the calibrated reference ICI),
:mod:`~forecast.evaluation.intervals` (patient-level bootstrap of the headline
figures), :mod:`~forecast.evaluation.crossval` (patient-grouped
cross-validation), :mod:`~forecast.evaluation.oracle` (the simulator's true
risks), :mod:`~forecast.evaluation.pipeline` (cohort and holdout evaluation,
the done-when targets) and :mod:`~forecast.evaluation.report` (the HTML
report). The estimators it uses (Kaplan-Meier, Turnbull, Cox) live in
:mod:`forecast.models`.
"""

from __future__ import annotations

from typing import Any

from forecast.evaluation import crossval

# The ``name as name`` imports keep names reachable from this package for the callers that
# read them off it (tests, research scripts, the fold models' factory of cross_validate);
# each is defined in the module it is imported from.
from forecast.evaluation.calibration import (
    MAX_SMOOTHER_ROWS,
    REFERENCE_REPS,
    calibrated_reference_ici,
    calibration,
    calibration_slope,
    km_pseudo_risk,
    pseudo_observed,
    published_observed,
    smoothed_observed,
)
from forecast.evaluation.calibration import _censoring_draws as _censoring_draws
from forecast.evaluation.calibration import _cll_basis as _cll_basis
from forecast.evaluation.calibration import _draw_from_risk_curve as _draw_from_risk_curve
from forecast.evaluation.calibration import _fit_cox as _fit_cox
from forecast.evaluation.calibration import _ici as _ici
from forecast.evaluation.crossval import ModelSpec, forecast_point_risk, grouped_folds
from forecast.evaluation.intervals import DEFAULT_CI_REPS, headline_bootstrap
from forecast.evaluation.intervals import _patient_resampler as _patient_resampler
from forecast.evaluation.metrics import (
    AGE_BANDS,
    CONVERSION_TEXT,
    MIN_GROUP_EVENTS,
    MIN_GROUP_N,
    RANK_HORIZON,
    brier,
    fairness,
    harrell_c,
    impute_times,
    status_at,
    subgroups,
    survival_metrics,
    td_auc,
    td_auc_with_reasons,
    uno_c,
    untied_times,
)
from forecast.evaluation.oracle import _truth_rows as _truth_rows
from forecast.evaluation.oracle import oracle_conditional_risks, oracle_risks, truth_scale
from forecast.evaluation.pipeline import (
    FORECAST_POINT_NOTE,
    evaluate_bundle,
    evaluate_cohort,
    targets,
)
from forecast.models import make_estimator as make_estimator
from forecast.models.cox import CoxFit as CoxFit
from forecast.models.cox import cox_efron as cox_efron
from forecast.models.nonparametric import km_risk as km_risk
from forecast.models.nonparametric import turnbull_risk as turnbull_risk
from forecast.models.nonparametric import turnbull_survival as turnbull_survival

__all__ = [
    "AGE_BANDS",
    "CONVERSION_TEXT",
    "DEFAULT_CI_REPS",
    "FORECAST_POINT_NOTE",
    "MAX_SMOOTHER_ROWS",
    "MIN_GROUP_EVENTS",
    "MIN_GROUP_N",
    "RANK_HORIZON",
    "REFERENCE_REPS",
    "ModelSpec",
    "brier",
    "calibrated_reference_ici",
    "calibration",
    "calibration_slope",
    "cross_validate",
    "evaluate_bundle",
    "evaluate_cohort",
    "fairness",
    "forecast_point_risk",
    "grouped_folds",
    "harrell_c",
    "headline_bootstrap",
    "impute_times",
    "km_pseudo_risk",
    "published_observed",
    "oracle_conditional_risks",
    "oracle_risks",
    "pseudo_observed",
    "smoothed_observed",
    "status_at",
    "subgroups",
    "survival_metrics",
    "targets",
    "td_auc",
    "td_auc_with_reasons",
    "truth_scale",
    "uno_c",
    "untied_times",
]


def cross_validate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`forecast.evaluation.crossval.cross_validate` with the fold estimators built by
    this package's ``make_estimator``, read at each call: replacing
    ``forecast.evaluation.make_estimator`` lets a caller observe the fold models."""
    kwargs.setdefault("estimator_factory", make_estimator)
    return crossval.cross_validate(*args, **kwargs)
