"""The numpy-only serving form of a fitted survival model.

A :class:`Bundle` holds exactly what prediction needs and nothing else:
coefficients, ancillary (shape/scale) parameters, a baseline on a grid for the
Cox and Kaplan-Meier kinds, the feature means/scales, the category levels, the
feature order, the kind and the horizons, plus a bootstrap ensemble of
parameter sets for uncertainty bands. It is saved as ``bundle.json`` (small
metadata) and ``bundle.npz`` (arrays, loaded with ``allow_pickle=False``); no
pickle, no lifelines object, no training rows (STYLE.md rule 4).

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
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_ndtr, ndtr

from forecast.contract import HORIZONS

FORMAT = "kap-forecast-bundle"
FORMAT_VERSION = 2
#: Versions :meth:`Bundle.load` reads. Version 1 wrote the categorical
#: features as a JSON object, whose keys the sorted-key writer reordered, so a
#: version-1 encoder read back as written put the categorical coefficients on
#: the wrong one-hot columns; its order is restored from the stored
#: ``design_columns`` (the fit order) on load. Version 2 writes a list of
#: ``[name, levels]`` pairs.
READABLE_VERSIONS = (1, 2)
AFT_FAMILIES: tuple[str, ...] = ("weibull", "lognormal", "loglogistic")
KINDS: tuple[str, ...] = (
    "km", "cox", "weibull", "lognormal", "loglogistic", "landmark", "dynamic", "piecewise"
)
#: The kind ``forecast train`` fits unless told otherwise (README, "The piecewise model");
#: ``dynamic`` until 2026-12-06.
DEFAULT_KIND = "piecewise"
#: Families whose linear predictor is on the log-hazard scale (positive: shorter benefit);
#: the AFT families' is on the log-time scale (positive: longer benefit).
HAZARD_FAMILIES: tuple[str, ...] = ("cox", "piecewise")
#: Features an ``as_of`` bundle reads its clock from (see :func:`clock_arrays`).
CLOCK_FEATURES: dict[str, str] = {
    "elapsed": "elapsed_days",
    "since_assessment": "days_since_assessment",
    "assessments": "n_assessments_since_session",
}
JSON_NAME = "bundle.json"
NPZ_NAME = "bundle.npz"

#: Variance below which an encoded column carries no information and is left out of the fit.
_MIN_VARIANCE = 1e-12


class BundleError(ValueError):
    """A bundle file is missing, malformed or of an unknown format."""


# --------------------------------------------------------------------------- encoder
@dataclass
class Encoder:
    """Turn a feature frame into the standardised design matrix of the model.

    Numeric features are centred on their training mean and divided by their
    training standard deviation; a missing value (NaN) is imputed with the
    training mean, i.e. encodes to 0. Each categorical feature is one-hot
    encoded over its fixed levels (``FEATURES``) minus a reference level (the
    most frequent level in training), and each indicator is centred on its
    training frequency. An unseen or missing category therefore encodes to
    all-zeros for that feature, which is the training-frequency-weighted
    average effect of the feature ("unknown" handling without a reference
    bias); :meth:`unknown_counts` reports how many rows were affected so that
    callers can add a caveat. Columns with (near) zero training variance are
    marked inactive: they are left out of the fit and get coefficient 0.
    """

    numeric: tuple[str, ...]
    means: np.ndarray
    scales: np.ndarray
    categorical: dict[str, tuple[str, ...]]
    references: dict[str, str | None]
    level_means: dict[str, np.ndarray]
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    time_feature: str | None = None
    time_interactions: tuple[str, ...] = ()

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]],
        *, time_feature: str | None = None, time_interactions: Sequence[str] = (),
    ) -> Encoder:
        """Learn means, scales, reference levels and level frequencies from ``frame``.

        ``time_interactions`` (numeric features) each add a design column
        ``feature * log(1 + max(time_feature, 0))`` (raw values, missing
        imputed with the mean first), standardised like the numeric columns:
        effects that change with the time since the episode start.
        """
        _require_columns(frame, [*numeric, *categorical])
        inter = tuple(f for f in time_interactions if f in numeric and f != time_feature)
        if inter and time_feature not in numeric:
            raise ValueError(f"time_feature {time_feature!r} must be one of the numeric features")
        num = _numeric_block(frame, numeric)
        with np.errstate(invalid="ignore"):
            means = np.nanmean(num, axis=0) if num.size else np.zeros(len(numeric))
        means = np.where(np.isfinite(means), means, 0.0)
        filled = np.where(np.isnan(num), means, num)
        if inter:
            names = list(numeric)
            lt = np.log1p(np.maximum(filled[:, names.index(str(time_feature))], 0.0))
            prod = filled[:, [names.index(f) for f in inter]] * lt[:, None]
            means = np.r_[means, prod.mean(axis=0) if len(prod) else np.zeros(len(inter))]
            filled = np.hstack([filled, prod])
        scales = filled.std(axis=0) if len(filled) else np.ones(len(means))
        scales = np.where(scales > np.sqrt(_MIN_VARIANCE), scales, 1.0)
        references: dict[str, str | None] = {}
        level_means: dict[str, np.ndarray] = {}
        cats = {name: tuple(levels) for name, levels in categorical.items()}
        for name, levels in cats.items():
            values = frame[name].to_numpy(dtype=object)
            onehot = values[:, None] == np.asarray(levels, dtype=object)[None, :]
            counts = onehot.sum(axis=0)
            ref = levels[int(np.argmax(counts))] if counts.sum() > 0 else None
            references[name] = ref
            kept = [lv for lv in levels if lv != ref]
            keep_idx = [levels.index(lv) for lv in kept]
            level_means[name] = (
                onehot[:, keep_idx].mean(axis=0) if len(values) else np.zeros(len(kept))
            )
        enc = cls(tuple(numeric), means, scales, cats, references, level_means,
                  time_feature=time_feature if inter else None, time_interactions=inter)
        design = enc.transform(frame)
        var = design.var(axis=0) if len(design) else np.zeros(design.shape[1])
        enc.active = var > _MIN_VARIANCE
        return enc

    @property
    def columns(self) -> list[str]:
        """Names of the design columns, in order (``feature`` or ``feature=level``)."""
        cols = list(self.numeric)
        cols += [f"{f}*log1p({self.time_feature})" for f in self.time_interactions]
        for name, levels in self.categorical.items():
            cols += [f"{name}={lv}" for lv in levels if lv != self.references[name]]
        return cols

    @property
    def column_features(self) -> list[str]:
        """The source feature of each design column (for grouping contributions)."""
        out = list(self.numeric) + list(self.time_interactions)
        for name, levels in self.categorical.items():
            out += [name] * sum(lv != self.references[name] for lv in levels)
        return out

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the (n, p) design matrix of ``frame`` (see the class notes).

        Vectorised for 1 and 10,000 rows alike. The positions of the needed
        columns are looked up once per frame layout (cached). A few rows (the
        serving case) are read with ONE ``to_numpy`` of the whole frame and
        ``np.take`` of the column positions; many rows column by column with
        ``to_numpy`` into a column-major buffer (no sub-frame copy, no
        consolidation of the wide mixed-dtype frame). Standardisation is one
        broadcast; each categorical feature is an ``np.take`` of precomputed
        centred one-hot rows by level code.
        """
        num_pos, cat_pos = self._positions(frame)
        n = len(frame)
        k = len(self.numeric)
        out_t = np.empty((len(self.columns), n))  # column-major: one row per design column
        cat_values: list[np.ndarray | pd.Series]
        if n <= _SMALL_FRAME:
            obj = frame.to_numpy()
            try:
                out_t[:k] = np.take(obj, num_pos, axis=1).T.astype(float)
            except (TypeError, ValueError):  # text cells: unparseable -> NaN -> mean
                out_t[:k] = _coerced_numeric(frame, self.numeric)
            cat_values = [obj[:, j] for j in cat_pos]
        else:
            for j, name in enumerate(self.numeric):
                col = frame[name].to_numpy()
                if col.dtype.kind not in "fiub":
                    col = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
                out_t[j] = col
            cat_values = [frame[name] for name in self.categorical]
        if k:
            np.copyto(out_t[:k], self.means[:k, None], where=np.isnan(out_t[:k]))
        if self.time_interactions:
            t_row, f_rows = self._interaction_rows()
            m = len(f_rows)
            np.multiply(out_t[f_rows], np.log1p(np.maximum(out_t[t_row], 0.0))[None, :],
                        out=out_t[k : k + m])
            k += m
        if k:
            num = out_t[:k]
            num -= self.means[:, None]
            num /= self.scales[:, None]
        for (name, levels), values in zip(self.categorical.items(), cat_values, strict=True):
            table_t = self._table_t(name)
            # Unknown or missing (code -1 -> last column of zeros) = frequency-weighted average.
            np.take(table_t, _codes(values, levels), axis=1,
                    out=out_t[k : k + table_t.shape[0]])
            k += table_t.shape[0]
        return out_t.T

    def _positions(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the numeric and categorical feature columns in ``frame`` (cached)."""
        cache = self.__dict__.setdefault("_positions_cache", {})
        key = tuple(frame.columns)
        hit = cache.get(key)
        if hit is None:
            _require_columns(frame, [*self.numeric, *self.categorical])
            if not frame.columns.is_unique:
                raise ValueError("the input frame has duplicate column names")
            hit = (frame.columns.get_indexer(list(self.numeric)).astype(np.intp),
                   frame.columns.get_indexer(list(self.categorical)).astype(np.intp))
            if len(cache) > 32:  # a handful of layouts in practice; never grow unbounded
                cache.clear()
            cache[key] = hit
        return hit

    def _interaction_rows(self) -> tuple[int, np.ndarray]:
        names = list(self.numeric)
        return (names.index(str(self.time_feature)),
                np.asarray([names.index(f) for f in self.time_interactions], dtype=np.intp))

    def _table_t(self, name: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_tables_t", {})
        if name not in cache:
            cache[name] = np.ascontiguousarray(self._table(name).T)
        return cache[name]

    def _table(self, name: str) -> np.ndarray:
        """(levels + 1, kept levels) centred one-hot rows per level code; last row = unknown."""
        cache = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            levels = self.categorical[name]
            kept = [i for i, lv in enumerate(levels) if lv != self.references[name]]
            eye = np.eye(len(levels))[:, kept]
            table = np.vstack([eye - self.level_means[name], np.zeros((1, len(kept)))])
            cache[name] = table
        return cache[name]

    def unknown_counts(self, frame: pd.DataFrame) -> dict[str, int]:
        """Count rows whose category is missing or not one of the fixed levels, per feature."""
        return {
            name: int((_codes(frame[name], levels) == -1).sum())
            for name, levels in self.categorical.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (arrays as lists)."""
        return {
            "numeric": list(self.numeric),
            "means": self.means.tolist(),
            "scales": self.scales.tolist(),
            # a list of pairs: the order of the categorical features is the order of
            # the coefficients, and a JSON object's keys get sorted on writing
            "categorical": [[k, list(v)] for k, v in self.categorical.items()],
            "references": dict(self.references),
            "level_means": {k: v.tolist() for k, v in self.level_means.items()},
            "active": self.active.astype(bool).tolist(),
            "time_feature": self.time_feature,
            "time_interactions": list(self.time_interactions),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], order: Sequence[str] | None = None) -> Encoder:
        """Inverse of :meth:`to_dict`.

        ``order`` names the categorical features in coefficient order; it is
        needed only for the version-1 layout (a JSON object whose key order was
        lost), see :data:`READABLE_VERSIONS`.
        """
        raw = d["categorical"]
        if isinstance(raw, Mapping):
            names = list(order) if order is not None else list(raw)
            if sorted(names) != sorted(raw):
                raise BundleError("encoder: the categorical features do not match their order")
            pairs = [(k, raw[k]) for k in names]
        else:
            pairs = [(str(k), v) for k, v in raw]
        return cls(
            tuple(d["numeric"]),
            np.asarray(d["means"], dtype=float),
            np.asarray(d["scales"], dtype=float),
            {k: tuple(v) for k, v in pairs},
            dict(d["references"]),
            {k: np.asarray(v, dtype=float) for k, v in d["level_means"].items()},
            np.asarray(d["active"], dtype=bool),
            d.get("time_feature"),
            tuple(d.get("time_interactions", ())),
        )


def _encoder_of(d: Mapping[str, Any], name: str) -> Encoder:
    """The encoder of a bundle's JSON, checked against its stored design columns."""
    stored = [str(c) for c in d.get("design_columns") or []]
    raw = d["encoder"].get("categorical")
    order = None
    if isinstance(raw, Mapping):  # version 1: recover the fit order from the design columns
        order = list(dict.fromkeys(c.split("=", 1)[0] for c in stored if "=" in c
                                   and c.split("=", 1)[0] in raw))
        order += [k for k in raw if k not in order]  # features without an active level
    try:
        enc = Encoder.from_dict(d["encoder"], order)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{name}: cannot read the encoder ({exc})") from exc
    if stored and enc.columns != stored:
        raise BundleError(f"{name}: the encoder's columns do not match design_columns")
    return enc


def _require_columns(frame: pd.DataFrame, names: Sequence[str]) -> None:
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(
            f"feature columns missing from the input frame: {', '.join(missing)}; "
            "build it with forecast.features (features_at / landmark_dataset)"
        )


#: Frames up to this many rows are encoded through one ``to_numpy`` of the whole frame.
_SMALL_FRAME = 64


def _coerced_numeric(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(len(names), n) numeric block with unparseable cells as NaN."""
    return np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float)
                     for c in names]) if names else np.zeros((0, len(frame)))


def _float_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """One column as float (a Series' own ``to_numpy`` is the fast path at one row)."""
    col = frame[name]
    try:
        return col.to_numpy(dtype=float)
    except (TypeError, ValueError):  # text cells: coerce (unparseable -> NaN)
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)


def _numeric_block(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    if not names:
        return np.zeros((len(frame), 0))
    block = frame[list(names)]
    try:
        return block.to_numpy(dtype=float)
    except (TypeError, ValueError):  # text cells: coerce (unparseable -> NaN -> mean)
        return block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


@functools.lru_cache(maxsize=64)
def _level_index(levels: tuple[str, ...]) -> dict[str, int]:
    return {lv: i for i, lv in enumerate(levels)}


def _codes(values: pd.Series | np.ndarray, levels: Sequence[str]) -> np.ndarray:
    """Level index of each value; -1 for missing or unseen values."""
    if len(values) <= _SMALL_FRAME:  # serving: a dict lookup beats hashing the column
        index = _level_index(tuple(levels))
        arr = values if isinstance(values, np.ndarray) else values.to_numpy(dtype=object)
        return np.fromiter((index.get(v, -1) if isinstance(v, str) else -1 for v in arr),
                           dtype=np.intp, count=len(arr))
    values = pd.Series(values) if isinstance(values, np.ndarray) else values
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = values.cat.categories
        lut = np.asarray([levels.index(c) if c in levels else -1 for c in cats] + [-1],
                         dtype=np.intp)
        return lut[np.asarray(values.cat.codes, dtype=np.intp)]
    # Hash the column once, then map its few distinct values to level indices.
    fcodes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    index = {lv: i for i, lv in enumerate(levels)}
    lut = np.asarray([index.get(u, -1) if isinstance(u, str) else -1 for u in uniques] + [-1],
                     dtype=np.intp)
    return lut[fcodes]  # sentinel -1 picks the trailing -1


# --------------------------------------------------------------------------- survival kernels
def aft_log_survival(family: str, log_t: np.ndarray, eta: np.ndarray, g: np.ndarray) -> np.ndarray:
    """log S(t) of an AFT family in lifelines' parametrisation (arrays broadcast).

    ``eta`` is the log-scale location (intercept + z . beta), ``g`` the log of
    the ancillary parameter (rho, sigma or beta of lifelines).
    """
    if family == "weibull":
        return -np.exp(np.exp(g) * (log_t - eta))
    if family == "lognormal":
        return log_ndtr(-(log_t - eta) / np.exp(g))
    if family == "loglogistic":
        return -np.logaddexp(np.exp(g) * (log_t - eta), 0.0)
    raise BundleError(f"unknown AFT family {family!r}; expected one of {AFT_FAMILIES}")


def aft_survival(family: str, log_t: np.ndarray, eta: np.ndarray, g: Any) -> np.ndarray:
    """S(t) of an AFT family, computed directly (the serving fast path, no log/exp round trip).

    Equal to ``exp(aft_log_survival(...))`` (arrays broadcast to (n, k)). The
    Weibull and log-logistic forms use numpy's vectorised ``exp`` in place,
    several times faster than scipy's ``expit``/``logaddexp`` on the
    50,000 values of a 10,000-patient prediction.
    """
    rho = np.exp(g)
    y = np.subtract(log_t, eta)  # log t - eta, (n, k)
    if family == "lognormal":
        y /= rho
        np.negative(y, out=y)
        return ndtr(y)
    y *= rho
    with np.errstate(over="ignore"):
        np.exp(y, out=y)  # (t / exp(eta)) ** rho; overflow -> inf -> S = 0
        if family == "weibull":
            np.negative(y, out=y)
            return np.exp(y, out=y)
    if family == "loglogistic":
        y += 1.0
        return np.reciprocal(y, out=y)
    raise BundleError(f"unknown AFT family {family!r}; expected one of {AFT_FAMILIES}")


def _matvec(z: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``z @ coef`` (BLAS gemv).

    An earlier note measured 8-12 ms first calls of the multi-threaded OpenBLAS
    gemv after idle threads; re-measured on 2026-11-27 (10,000 x 65 design,
    after 1 s idle) BLAS took 0.45-0.66 ms and numpy's single-threaded einsum
    0.63-0.91 ms (cold caches either way), and warm 0.07 vs 0.19 ms. So BLAS.
    """
    return z @ coef


def window_exposure(t: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Days of ``[0, t]`` in each window ``[edges[j], edges[j + 1])``, shape ``t.shape + (J,)``.

    ``edges`` start at 0 and increase; the last window is open (to infinity).
    Negative times have no exposure.
    """
    t = np.asarray(t, dtype=float)[..., None]
    e = np.asarray(edges, dtype=float)
    upper = np.append(e[1:], np.inf)
    return np.clip(np.minimum(t, upper) - e, 0.0, None)


def _tail_log_ratio(family: str, y_t: np.ndarray, y_c: np.ndarray) -> np.ndarray:
    """``log S(t) - log S(c)`` (clipped at 0) from ``y = log u`` without forming u.

    Weibull: ``u_c - u_t = -e^{y_t} (1 - e^{y_c - y_t})``, which is -inf (S ratio
    0) far in the tail unless t = c (ratio 1). Log-logistic:
    ``softplus(y_c) - softplus(y_t)``, whose hazard falls like rho / t, so a late
    entry still leaves a finite ratio of about (c / t)^rho. Log-normal (``y`` the
    standardised log time): ``log_ndtr(-y_t) - log_ndtr(-y_c)``.
    """
    if family == "lognormal":
        return np.minimum(log_ndtr(-y_t) - log_ndtr(-y_c), 0.0)
    d = np.minimum(y_c - y_t, 0.0)
    if family == "weibull":
        with np.errstate(divide="ignore", over="ignore"):
            return -np.exp(y_t + np.log(-np.expm1(d)))
    return np.minimum(np.logaddexp(0.0, y_c) - np.logaddexp(0.0, y_t), 0.0)


def _safe_log(t: np.ndarray) -> np.ndarray:
    # lifelines clips t to a tiny positive value before taking logs; S(0) = 1 either way.
    return np.log(np.clip(t, 1e-100, np.inf))


def _step(knots: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Right-continuous step function: value at the last knot <= t (1 before the first)."""
    idx = np.searchsorted(knots, t, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], 1.0)


#: ``since`` of an unconditional prediction (broadcasts as 0; skips a per-row zeros array).
_NO_SINCE = np.zeros(1)


def clock_arrays(
    frame: pd.DataFrame, names: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(start, entry)`` in days since the episode start, per row of ``frame``.

    ``start`` is the as-of date (the features' ``elapsed_days``); ``entry`` the
    last assessment after the session, which showed no waning (the rows a
    forecast is made for), or 0 (the episode start) when there is none yet.
    The benefit is known to have lasted to ``entry``, not to ``start``: a
    dynamic model's risk within h days is ``1 - S(start + h) / S(entry)``.
    """
    names = dict(CLOCK_FEATURES if names is None else names)
    cols = [names["elapsed"], names["since_assessment"], names["assessments"]]
    _require_columns(frame, cols)
    el, dsa, n = (_float_column(frame, c) for c in cols)
    el = np.maximum(np.nan_to_num(el, nan=0.0), 0.0)
    n = np.nan_to_num(n, nan=0.0)
    seen = (n > 0) & np.isfinite(dsa)
    entry = np.where(seen, np.clip(el - np.nan_to_num(dsa), 0.0, el), 0.0)
    return el, entry


# --------------------------------------------------------------------------- bundle
@dataclass
class Bundle:
    """Numpy-only serving form of a fitted model (see the module notes).

    Attributes
    ----------
    kind : str
        One of ``KINDS`` (the ``--kind`` the model was trained with).
    family : str
        ``"weibull"``, ``"lognormal"``, ``"loglogistic"``, ``"cox"``, ``"km"`` or
        ``"piecewise"``.
    time_origin : {"landmark", "as_of", "episode_start"}
        ``"landmark"``: times count from the as-of date (features at as-of);
        ``"as_of"``: the model is on the episode's time scale and the bundle
        reads the as-of clock from the features (:func:`clock_arrays`):
        ``S(start + t) / S(entry)``, times after the as-of date;
        ``"episode_start"``: times count from the episode's start, so risks at
        an as-of date must be conditioned on the time already survived.
    horizons : tuple of int
        Default horizons (days) of :meth:`predict_risk`.
    encoder : Encoder or None
        Feature encoding (None for ``km``).
    arrays : dict of str to ndarray
        Parameters: ``coef``, ``intercept``, ``ancillary`` and optionally
        ``anc_index``/``anc_coef`` (AFT); ``coef``,
        ``norm_mean``, ``base_times``, ``base_cumhaz`` (Cox); ``km_times``,
        ``km_surv`` (KM); bootstrap sets ``boot_coef``, ``boot_intercept``,
        ``boot_ancillary``, ``boot_anc_coef`` (AFT), ``boot_coef``, ``boot_grid``,
        ``boot_cumhaz`` (Cox), ``boot_grid``, ``boot_surv`` (KM); ``coef``,
        ``window_coef`` (J, p), ``log_base`` (J), ``edges`` (J) and ``boot_coef``,
        ``boot_window_coef``, ``boot_log_base`` (piecewise).
    meta : dict
        JSON-able settings (penalizer, distribution selection, bootstrap size, seed).
    """

    kind: str
    family: str
    time_origin: str
    horizons: tuple[int, ...]
    encoder: Encoder | None
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    @property
    def features(self) -> list[str]:
        """Input feature columns the bundle needs (empty for ``km``)."""
        if self.encoder is None:
            return []
        names = [*self.encoder.numeric, *self.encoder.categorical]
        if self.time_origin == "as_of":
            names += [c for c in self._clock_names().values() if c not in names]
        return names

    def _clock_names(self) -> dict[str, str]:
        return dict(self.meta.get("clock") or CLOCK_FEATURES)

    def _clock(self, X_frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """``(start, entry)`` of an ``as_of`` bundle (None for the other origins)."""
        if self.time_origin != "as_of":
            return None
        return clock_arrays(X_frame, self._clock_names())

    @property
    def n_bootstrap(self) -> int:
        """Number of bootstrap parameter sets stored."""
        key = "boot_surv" if self.family == "km" else "boot_coef"
        return int(self.arrays[key].shape[0]) if key in self.arrays else 0

    def design(self, X_frame: pd.DataFrame) -> np.ndarray:
        """Encoded design matrix of ``X_frame`` (n, p)."""
        if self.encoder is None:
            return np.zeros((len(X_frame), 0))
        return self.encoder.transform(X_frame)

    def unknown_categories(self, X_frame: pd.DataFrame) -> dict[str, int]:
        """Rows per categorical feature whose value was missing or unseen (encoded as average)."""
        return {} if self.encoder is None else self.encoder.unknown_counts(X_frame)

    def _since(self, X_frame: pd.DataFrame, since: Any) -> np.ndarray:
        n = len(X_frame)
        if since is None:
            return _NO_SINCE
        arr = np.broadcast_to(np.asarray(since, dtype=float), (n,)).copy()
        if np.any(~np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError("since must be finite and >= 0 (days already survived)")
        return arr

    def _aft_params(self, z: np.ndarray, which: int | None) -> tuple[np.ndarray, Any]:
        """(eta (n,), log-shape g (n, 1) or scalar) of an AFT bundle."""
        a = self.arrays
        if which is None:
            coef, b0, g = a["coef"], float(a["intercept"]), float(a["ancillary"])
            gamma = a.get("anc_coef")
        else:
            coef = a["boot_coef"][which]
            b0, g = float(a["boot_intercept"][which]), float(a["boot_ancillary"][which])
            gamma = a["boot_anc_coef"][which] if "boot_anc_coef" in a else None
        eta = _matvec(z, coef)
        eta += b0
        if gamma is not None and gamma.size:
            # the shape parameter depends on a few covariates (e.g. time since the start);
            # a column at a time: z is column-major (the encoder's layout), so each
            # column is a contiguous view, and no (n, m) fancy-index copy is made.
            idx = self._anc_index()
            lg = z[:, idx[0]] * gamma[0]
            lg += g
            for j, c in zip(idx[1:], gamma[1:], strict=True):
                lg += c * z[:, j]
            return eta, lg[:, None]
        return eta, g

    def _anc_index(self) -> np.ndarray:
        cache = self.__dict__.setdefault("_cache", {})
        if "anc_index" not in cache:
            cache["anc_index"] = self.arrays["anc_index"].astype(np.intp)
        return cache["anc_index"]

    def _log_surv(self, z: np.ndarray, t: np.ndarray, which: int | None = None) -> np.ndarray:
        """log S(t) for rows of ``z`` at times ``t`` (n, k); ``which`` = bootstrap index."""
        a = self.arrays
        if self.family in AFT_FAMILIES:
            eta, g = self._aft_params(z, which)
            return aft_log_survival(self.family, _safe_log(t), eta[:, None], g)
        if self.family == "cox":
            if which is None:
                lp = (z - a["norm_mean"]) @ a["coef"]
                h0 = np.interp(t, a["base_times"], a["base_cumhaz"])
            else:
                lp = z @ a["boot_coef"][which]
                h0 = np.interp(t, a["boot_grid"], a["boot_cumhaz"][which])
            return -h0 * np.exp(lp)[:, None]
        if self.family == "piecewise":  # t: days since the last waning-free assessment
            return -self._piecewise_cumhaz(self._piecewise_rate(z, which),
                                           np.broadcast_to(t, (len(z), np.shape(t)[-1])))
        if self.family == "km":
            if which is None:
                s = _step(a["km_times"], a["km_surv"], t)
            else:
                s = _step(a["boot_grid"], a["boot_surv"][which], t)
            with np.errstate(divide="ignore"):
                return np.log(s)
        raise BundleError(f"unknown model family {self.family!r}")

    def _conditional_survival(
        self, z: np.ndarray, times: np.ndarray, since: np.ndarray, which: int | None = None,
        clock: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        n = len(z)
        if clock is not None:
            # as_of: S(start + since + t) / S(cond), cond = the entry (last event-free
            # assessment) or, when days after as-of are known survived, start + since.
            start, entry = clock
            if since is _NO_SINCE:
                base, cond = start, entry
            else:
                base = start + since
                cond = np.where(since > 0, base, entry)
            if self.family in AFT_FAMILIES:
                return self._aft_ratio(z, base, cond, times, which)
            if self.family == "piecewise":
                # its clock starts at the entry, where S = 1 by construction
                rate = self._piecewise_rate(z, which)  # the design products once
                h_t = self._piecewise_cumhaz(rate, (base - entry)[:, None] + times[None, :])
                h_c = self._piecewise_cumhaz(rate, (cond - entry)[:, None])
                return np.exp(np.minimum(h_c - h_t, 0.0))
            with np.errstate(over="ignore", invalid="ignore"):  # far tails: S -> 0
                log_s = self._log_surv(z, base[:, None] + times[None, :], which)
                log_s0 = self._log_surv(z, cond[:, None], which)
                # S(entry) = 0 in floating point: nothing left to lose, report S = 0
                log_s = np.where(np.isfinite(log_s0), log_s - log_s0, -np.inf)
            return np.exp(np.minimum(np.nan_to_num(log_s, nan=-np.inf), 0.0))
        if self.family in AFT_FAMILIES and not np.any(since > 0):
            # The common serving case: survival directly, no log/exp round trip.
            eta, g = self._aft_params(z, which)
            # 0 <= S <= 1 by construction of each form: no clipping pass needed.
            return aft_survival(self.family, _safe_log(times)[None, :], eta[:, None], g)
        if not np.any(since > 0):
            # Same times for every row: evaluate logs/baselines once, broadcast over rows.
            log_s = self._log_surv(z, times[None, :], which)
        else:
            t = since[:, None] + times[None, :]
            log_s = self._log_surv(z, t, which)
            log_s0 = self._log_surv(z, since[:, None], which)
            with np.errstate(invalid="ignore"):
                log_s = log_s - log_s0
            # S(since) = 0 (KM tail): nothing left to lose; report the limit S = 0.
            log_s = np.where(np.isfinite(log_s0), log_s, -np.inf)
        out = np.exp(np.minimum(log_s, 0.0))
        if out.shape != (n, times.size):
            out = np.array(np.broadcast_to(out, (n, times.size)))
        return out

    def _piecewise_rate(self, z: np.ndarray, which: int | None) -> np.ndarray:
        """Hazard rate (n, J) of each row in each window of a piecewise bundle."""
        a = self.arrays
        if which is None:
            coef, wcoef, log_base = a["coef"], a["window_coef"], a["log_base"]
        else:
            coef = a["boot_coef"][which]
            wcoef, log_base = a["boot_window_coef"][which], a["boot_log_base"][which]
        # each window's full effect (average + deviation): one design product, not two
        lin = z @ (wcoef + coef).T  # (n, J)
        lin += log_base
        return np.exp(lin)

    def _piecewise_cumhaz(self, rate: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Cumulative hazard (n, k) at times ``t`` (n, k) from the entry, given the rates."""
        # sum over windows of rate x days of [0, t] in the window; a window at a time
        # keeps memory at (n, k) for long grids (predict_median: 7,305 times a row)
        edges = self.arrays["edges"]
        upper = np.append(edges[1:], np.inf)
        t = np.asarray(t, dtype=float)
        out = np.zeros(np.broadcast_shapes(t.shape, (len(rate), 1)))
        for j in range(edges.size):
            days = np.minimum(t, upper[j]) - edges[j]
            np.maximum(days, 0.0, out=days)
            out += rate[:, j:j + 1] * days
        return out

    def _aft_ratio(
        self, z: np.ndarray, base: np.ndarray, cond: np.ndarray, times: np.ndarray,
        which: int | None,
    ) -> np.ndarray:
        """``S(base + t) / S(cond)`` of an AFT bundle in one pass over (k + 1, n) times.

        Weibull: ``exp(u_c - u_t)`` with ``u = (t / e^eta)^rho``; log-logistic:
        ``(1 + u_c) / (1 + u_t)``; log-normal ``ndtr(-y_t) / ndtr(-y_c)``. No
        log/exp round trip of S itself; rows far in a tail (where u or Phi would
        leave the doubles) are computed in log space (:func:`_tail_log_ratio`,
        ``log_ndtr``).
        The work array is time-major, so every pass is over contiguous memory
        (row-major (n, k + 1) with strided column slices took three times as
        long at 10,000 rows); the result is its transpose, an (n, k) view.
        """
        n, k = len(z), times.size
        if n == 0:  # no rows: the reductions below have no identity
            return np.empty((0, k))
        eta, g = self._aft_params(z, which)
        t = np.empty((k + 1, n))
        np.add(times[:, None], base, out=t[:k])
        t[k] = cond
        # lifelines clips t to 1e-100 (S(0) = 1 either way); it also keeps -inf out
        # of log and exp, whose vector loops are twice as slow on infinities. Only
        # the entry row can hold 0 unless a time plus the smallest start is <= 0.
        # Every time at or after the row's cond: the ratio cannot exceed 1 (see below).
        # Checked on many rows only: on a few, the check costs more than the clipping.
        ordered = n > 64 and bool(np.all(cond <= base + times.min()))
        np.maximum(t[k], 1e-100, out=t[k])
        if times.min() + base.min() <= 0.0:
            np.maximum(t[:k], 1e-100, out=t[:k])
        y = np.log(t, out=t)
        y -= eta
        scale = np.exp(g)
        if isinstance(scale, np.ndarray):
            scale = scale.reshape(-1)  # per-row shape (n, 1) -> broadcast over times
        lognormal = self.family == "lognormal"
        if lognormal:
            y /= scale
        else:
            y *= scale
        # Rows far in the tail are redone in log space (_tail_log_ratio): u = e^y
        # overflows a double for y > 709.8; Phi(-y) leaves ndtr's accurate range past
        # y = 30 (5e-198). y rises with t in each row, so the entry and the last time
        # decide. Their placeholders keep the fast forms below finite.
        limit = 30.0 if lognormal else 700.0
        jmax = int(times.argmax())
        big = tail = None
        if max(y[k].max(), y[jmax].max()) >= limit:
            big = (y[k] >= limit) | (y[jmax] >= limit)
            tail = _tail_log_ratio(self.family, y[:k, big], y[k, big])
            y[:, big] = 0.0
        out = y[:k]
        # S(t) / S(cond) <= 1 needs no clipping pass when every time is at or after the
        # row's cond (the serving case: entry <= as-of): equal times give identical
        # values, and clock times (days) that differ do so far beyond the rounding
        # of log, exp and ndtr, so u(cond) <= u(t).
        clip = not ordered
        if lognormal:  # S = Phi(-y); ndtr costs 0.6 of log_ndtr (relative error ~1e-13)
            np.negative(y, out=y)
            ndtr(y, out=y)
            np.divide(out, y[k], out=out)
            if clip:
                np.minimum(out, 1.0, out=out)
        else:
            np.exp(y, out=y)  # u = (t / e^eta)^rho
            if self.family == "weibull":
                np.subtract(y[k], out, out=out)
                if clip:
                    np.minimum(out, 0.0, out=out)
                np.exp(out, out=out)
            else:  # log-logistic: S = 1 / (1 + u)
                y += 1.0
                np.divide(y[k], out, out=out)
                if clip:
                    np.minimum(out, 1.0, out=out)
        if tail is not None:
            out[:, big] = np.exp(tail)
        return out.T

    # ------------------------------------------------------------------ prediction
    def predict_survival(
        self, X_frame: pd.DataFrame, times: Sequence[float] | np.ndarray, since: Any = None
    ) -> np.ndarray:
        """Survival probabilities, shape (n, len(times)).

        Parameters
        ----------
        X_frame : DataFrame
            One row per prediction with the feature columns (:attr:`features`).
        times : array-like of float
            Days after the time origin (after ``since`` when given).
        since : float or array-like, optional
            Days already survived; returns ``S(since + t) / S(since)``.
        """
        times = np.asarray(times, dtype=float).ravel()
        z = self.design(X_frame)
        return self._conditional_survival(z, times, self._since(X_frame, since), None,
                                          self._clock(X_frame))

    def predict_survival_design(
        self, z: np.ndarray, times: Sequence[float] | np.ndarray, since: Any = None,
        clock: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """As :meth:`predict_survival` on an already encoded design (:meth:`design`).

        An ``as_of`` bundle needs the ``clock`` (:func:`clock_arrays` of the frame).
        """
        times = np.asarray(times, dtype=float).ravel()
        if self.time_origin == "as_of" and clock is None:
            raise ValueError("an as_of bundle needs the clock (start, entry) of the rows")
        s0 = _NO_SINCE if since is None else np.broadcast_to(
            np.asarray(since, dtype=float), (len(z),))
        return self._conditional_survival(np.asarray(z, dtype=float), times, s0, None, clock)

    def predict_risk(
        self,
        X_frame: pd.DataFrame,
        horizons: Sequence[float] | np.ndarray | None = None,
        since: Any = None,
    ) -> np.ndarray:
        """Risk that the benefit wanes within each horizon, shape (n, len(horizons)).

        ``1 - S(since + h) / S(since)``. For the default landmark model
        (``time_origin == "landmark"``) the features are taken at the as-of
        date and ``since`` stays None; for static models pass the days since
        the episode's start as ``since``.
        """
        h = np.asarray(self.horizons if horizons is None else horizons, dtype=float)
        return 1.0 - self.predict_survival(X_frame, h, since)

    def predict_risk_band(
        self,
        X_frame: pd.DataFrame,
        horizons: Sequence[float] | np.ndarray | None = None,
        level: float = 0.9,
        since: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Percentile band of the risk over the bootstrap ensemble.

        Returns ``(lo, hi)``, each (n, len(horizons)), the ``(1 - level) / 2``
        and ``(1 + level) / 2`` quantiles of the risks predicted by the stored
        bootstrap parameter sets (refitted on patient-resampled data at train
        time), widened where needed so that the band contains the point risk.
        """
        if not 0.0 < level < 1.0:
            raise ValueError("level must be between 0 and 1")
        if self.n_bootstrap == 0:
            raise BundleError("this bundle has no bootstrap ensemble (trained with --bootstrap 0)")
        h = np.asarray(self.horizons if horizons is None else horizons, dtype=float)
        z = self.design(X_frame)
        s0 = self._since(X_frame, since)
        clock = self._clock(X_frame)
        risks = np.stack(
            [1.0 - self._conditional_survival(z, h, s0, b, clock)
             for b in range(self.n_bootstrap)]
        )
        lo = np.quantile(risks, (1.0 - level) / 2.0, axis=0)
        hi = np.quantile(risks, (1.0 + level) / 2.0, axis=0)
        point = 1.0 - self._conditional_survival(z, h, s0, None, clock)
        return np.minimum(lo, point), np.maximum(hi, point)

    def predict_median(self, X_frame: pd.DataFrame, since: Any = None) -> np.ndarray:
        """Median remaining time (days after ``since``); ``inf`` when never reached.

        Found on a 0.25-day grid up to 5 years, which is finer than any visit
        schedule. Callers must turn ``inf`` into "not reached" (STYLE.md).
        """
        grid = np.arange(0.0, 5 * 365.25, 0.25)
        surv = self.predict_survival(X_frame, grid, since)
        below = surv <= 0.5
        idx = np.argmax(below, axis=1)
        return np.where(below.any(axis=1), grid[idx], np.inf)

    def drivers(self, X_frame: pd.DataFrame) -> pd.DataFrame:
        """Contribution of each feature to the linear predictor, one column per feature.

        For AFT kinds positive values mean a longer expected benefit (the
        log-time scale); for Cox and piecewise (``HAZARD_FAMILIES``) positive
        values mean a higher hazard (shorter benefit); for piecewise the effect
        is the average over its windows (``coef``; ``window_coef`` holds each
        window's deviation from it). Zero for ``km``.
        """
        if self.encoder is None:
            return pd.DataFrame(index=range(len(X_frame)))
        z = self.design(X_frame)
        coef = self.arrays["coef"]
        contrib = z * coef[None, :]
        cols = self.encoder.column_features
        names = list(dict.fromkeys(cols))
        idx = np.asarray([names.index(c) for c in cols], dtype=int)
        out = np.zeros((len(z), len(names)))
        np.add.at(out.T, idx, contrib.T)
        return pd.DataFrame(out, columns=names)

    # ------------------------------------------------------------------ persistence
    def to_json_dict(self) -> dict[str, Any]:
        """The JSON part of the bundle (everything except the arrays)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "family": self.family,
            "time_origin": self.time_origin,
            "horizons": [int(h) for h in self.horizons],
            "encoder": None if self.encoder is None else self.encoder.to_dict(),
            "design_columns": [] if self.encoder is None else self.encoder.columns,
            "arrays": sorted(self.arrays),
            "meta": self.meta,
        }

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``bundle.json`` and ``bundle.npz`` into ``directory``; return the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        jpath, npath = directory / JSON_NAME, directory / NPZ_NAME
        jpath.write_text(json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n")
        with npath.open("wb") as fh:
            np.savez(fh, **{k: np.asarray(v, dtype=float) for k, v in self.arrays.items()})
        return [jpath, npath]

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        """Read a bundle written by :meth:`save` (no pickle; unknown formats refused)."""
        directory = Path(directory)
        jpath, npath = directory / JSON_NAME, directory / NPZ_NAME
        try:
            d = json.loads(jpath.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{jpath.name}: cannot read bundle metadata ({exc})") from exc
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{jpath.name}: not a {FORMAT} file")
        if d.get("format_version") not in READABLE_VERSIONS:
            raise BundleError(
                f"{jpath.name}: format_version {d.get('format_version')!r} is not supported "
                f"(this code reads versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        try:
            with np.load(npath, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in npz.files}
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{npath.name}: cannot read bundle arrays ({exc})") from exc
        if sorted(arrays) != sorted(d.get("arrays", [])):
            raise BundleError(f"{npath.name}: arrays do not match {jpath.name}")
        if d.get("kind") not in KINDS:
            raise BundleError(f"{jpath.name}: unknown kind {d.get('kind')!r}")
        enc = None if d["encoder"] is None else _encoder_of(d, jpath.name)
        return cls(
            kind=d["kind"],
            family=d["family"],
            time_origin=d["time_origin"],
            horizons=tuple(int(h) for h in d["horizons"]),
            encoder=enc,
            arrays=arrays,
            meta=d.get("meta", {}),
        )


def default_horizons() -> tuple[int, ...]:
    """The contract horizons (days)."""
    return tuple(HORIZONS)
