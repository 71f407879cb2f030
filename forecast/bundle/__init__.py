"""The numpy-only serving form of a fitted survival model.

A :class:`Bundle` holds exactly what prediction needs and nothing else:
coefficients, ancillary (shape/scale) parameters, a baseline on a grid for the
Cox and Kaplan-Meier kinds, the feature means/scales, the category levels, the
feature order, the kind and the horizons, plus a bootstrap ensemble of
parameter sets for uncertainty bands. It is saved as ``bundle.json`` (small
metadata) and ``bundle.npz`` (arrays, loaded with ``allow_pickle=False``); no
pickle, no lifelines object, no training rows.

The survival functions reproduce lifelines' parametrisations exactly so that a
bundle predicts the same numbers as the lifelines fitter it came from (tested
to 1e-9 in ``tests/test_bundle.py``):

- Weibull AFT: ``S(t) = exp(-(t / exp(eta)) ** exp(g))``
- log-normal AFT: ``S(t) = 1 - Phi((log t - eta) / exp(g))``
- log-logistic AFT: ``S(t) = 1 / (1 + (t / exp(eta)) ** exp(g))``
- Cox PH: ``S(t) = exp(-H0(t) * exp((z - m) . beta))`` with ``H0`` linearly
  interpolated between its knots (lifelines' ``interpolate_at_times``)
- Kaplan-Meier / Turnbull: a step function (value at the last knot <= t)
- piecewise exponential (``piecewise`` kind): on the time since the last
  waning-free assessment, ``H(t) = sum_j exp(a_j + z . (beta + delta_j)) *
  |[0, t] & window j|``, ``S = exp(-H)`` (:func:`window_exposure`)

where ``eta = intercept + z . beta``, ``g = ancillary + z[anc_index] . anc_coef``
(the shape may depend on a few covariates; a constant when ``anc_coef`` is
absent) and ``z`` is the encoded feature row.

Modules: :mod:`~forecast.bundle.schema` (file format, kinds, families),
:mod:`~forecast.bundle.encoder` (features -> design matrix),
:mod:`~forecast.bundle.kernels` (the survival functions of each family and the
as-of clock) and :mod:`~forecast.bundle.serving` (:class:`Bundle`: prediction,
save and load).
"""

from __future__ import annotations

from forecast.bundle.encoder import Encoder
from forecast.bundle.kernels import aft_log_survival, aft_survival, clock_arrays, window_exposure
from forecast.bundle.schema import (
    AFT_FAMILIES,
    CLOCK_FEATURES,
    DEFAULT_KIND,
    FORMAT,
    FORMAT_VERSION,
    HAZARD_FAMILIES,
    JSON_NAME,
    KINDS,
    NPZ_NAME,
    READABLE_VERSIONS,
    BundleError,
    default_horizons,
)
from forecast.bundle.serving import Bundle

__all__ = [
    "AFT_FAMILIES",
    "CLOCK_FEATURES",
    "DEFAULT_KIND",
    "FORMAT",
    "FORMAT_VERSION",
    "HAZARD_FAMILIES",
    "JSON_NAME",
    "KINDS",
    "NPZ_NAME",
    "READABLE_VERSIONS",
    "Bundle",
    "BundleError",
    "Encoder",
    "aft_log_survival",
    "aft_survival",
    "clock_arrays",
    "default_horizons",
    "window_exposure",
]
