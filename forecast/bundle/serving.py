"""The :class:`Bundle`: prediction from a fitted model's arrays, save and load."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

from forecast.bundle.encoder import Encoder, _encoder_of
from forecast.bundle.kernels import (
    aft_log_survival,
    aft_survival,
    clock_arrays,
    safe_log,
    step_survival,
    tail_log_ratio,
)
from forecast.bundle.schema import (
    AFT_FAMILIES,
    CLOCK_FEATURES,
    FORMAT,
    FORMAT_VERSION,
    JSON_NAME,
    KINDS,
    NPZ_NAME,
    READABLE_VERSIONS,
    BundleError,
)

#: ``since`` of an unconditional prediction (broadcasts as 0; skips a per-row zeros array).
_NO_SINCE = np.zeros(1)


def _base_cond(clock: tuple[np.ndarray, np.ndarray], since: Any
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(base, cond, entry)`` of an as_of bundle: ``S(base + t) / S(cond)``, ``cond`` the
    entry (last event-free assessment) or, when days after as-of are known survived,
    ``start + since``."""
    start, entry = clock
    if since is _NO_SINCE:
        return start, entry, entry
    base = start + since
    return base, np.where(since > 0, base, entry), entry


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

    def design(self, X_frame: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
        """Encoded design matrix of ``X_frame`` (n, p): a frame, or a mapping of
        feature name to column array (see :meth:`Encoder.transform`)."""
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
        eta = z @ coef  # BLAS gemv: faster than einsum, cold or warm, at serving sizes
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
            return aft_log_survival(self.family, safe_log(t), eta[:, None], g)
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
                s = step_survival(a["km_times"], a["km_surv"], t)
            else:
                s = step_survival(a["boot_grid"], a["boot_surv"][which], t)
            with np.errstate(divide="ignore"):
                return np.log(s)
        raise BundleError(f"unknown model family {self.family!r}")

    def _conditional_survival(
        self, z: np.ndarray, times: np.ndarray, since: np.ndarray, which: int | None = None,
        clock: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        n = len(z)
        if clock is not None:
            base, cond, entry = _base_cond(clock, since)
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
            return aft_survival(self.family, safe_log(times)[None, :], eta[:, None], g)
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

    def _piecewise_ensemble(
        self, z: np.ndarray, times: np.ndarray, since: np.ndarray,
        clock: tuple[np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        """Conditional survival (B, n, k) of every bootstrap set of a piecewise bundle.

        What :meth:`_conditional_survival` gives set by set, with the cumulative
        hazards of all sets in one pass per window: every element goes through the
        same operations in the same order, so the floats are identical (a test
        checks it), without the per-set Python calls (most of a one-row band).
        """
        rates = np.stack([self._piecewise_rate(z, b) for b in range(self.n_bootstrap)])
        n = len(z)
        if clock is not None:
            base, cond, entry = _base_cond(clock, since)
            h_t = self._piecewise_cumhaz_many(rates, (base - entry)[:, None] + times[None, :])
            h_c = self._piecewise_cumhaz_many(rates, (cond - entry)[:, None])
            return np.exp(np.minimum(h_c - h_t, 0.0))
        if not np.any(since > 0):
            log_s = -self._piecewise_cumhaz_many(
                rates, np.broadcast_to(times[None, :], (n, times.size))
            )
            return np.exp(np.minimum(log_s, 0.0))
        log_s = -self._piecewise_cumhaz_many(rates, since[:, None] + times[None, :])
        log_s0 = -self._piecewise_cumhaz_many(rates, since[:, None])
        with np.errstate(invalid="ignore"):
            log_s = log_s - log_s0
        log_s = np.where(np.isfinite(log_s0), log_s, -np.inf)
        return np.exp(np.minimum(log_s, 0.0))

    def _piecewise_cumhaz_many(self, rates: np.ndarray, t: np.ndarray) -> np.ndarray:
        """:meth:`_piecewise_cumhaz` of stacked rates (B, n, J): (B, n, k), same floats."""
        edges = self.arrays["edges"]
        upper = np.append(edges[1:], np.inf)
        t = np.asarray(t, dtype=float)
        out = np.zeros((len(rates), *np.broadcast_shapes(t.shape, (rates.shape[1], 1))))
        for j in range(edges.size):
            days = np.minimum(t, upper[j]) - edges[j]
            np.maximum(days, 0.0, out=days)
            out += rates[:, :, j:j + 1] * days
        return out

    def _aft_ratio(
        self, z: np.ndarray, base: np.ndarray, cond: np.ndarray, times: np.ndarray,
        which: int | None,
    ) -> np.ndarray:
        """``S(base + t) / S(cond)`` of an AFT bundle in one pass over (k + 1, n) times.

        Weibull: ``exp(u_c - u_t)`` with ``u = (t / e^eta)^rho``; log-logistic:
        ``(1 + u_c) / (1 + u_t)``; log-normal ``ndtr(-y_t) / ndtr(-y_c)``. No
        log/exp round trip of S itself; rows far in a tail (where u or Phi would
        leave the doubles) are computed in log space (:func:`tail_log_ratio`,
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
        # Rows far in the tail are redone in log space (tail_log_ratio): u = e^y
        # overflows a double for y > 709.8; Phi(-y) leaves ndtr's accurate range past
        # y = 30 (5e-198). y rises with t in each row, so the entry and the last time
        # decide. Their placeholders keep the fast forms below finite.
        limit = 30.0 if lognormal else 700.0
        jmax = int(times.argmax())
        big = tail = None
        if max(y[k].max(), y[jmax].max()) >= limit:
            big = (y[k] >= limit) | (y[jmax] >= limit)
            tail = tail_log_ratio(self.family, y[:k, big], y[k, big])
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
        self,
        X_frame: pd.DataFrame,
        times: Sequence[float] | np.ndarray,
        since: Any = None,
        *,
        design: np.ndarray | None = None,
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
        design : ndarray, optional
            ``self.design(X_frame)`` when the caller has it already (it is the
            costly part for a few rows; a forecast needs it three times).
        """
        times = np.asarray(times, dtype=float).ravel()
        z = self.design(X_frame) if design is None else design
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
        *,
        design: np.ndarray | None = None,
    ) -> np.ndarray:
        """Risk that the benefit wanes within each horizon, shape (n, len(horizons)).

        ``1 - S(since + h) / S(since)``. For the default landmark model
        (``time_origin == "landmark"``) the features are taken at the as-of
        date and ``since`` stays None; for static models pass the days since
        the episode's start as ``since``.
        """
        h = np.asarray(self.horizons if horizons is None else horizons, dtype=float)
        return 1.0 - self.predict_survival(X_frame, h, since, design=design)

    def predict_risk_band(
        self,
        X_frame: pd.DataFrame,
        horizons: Sequence[float] | np.ndarray | None = None,
        level: float = 0.9,
        since: Any = None,
        *,
        design: np.ndarray | None = None,
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
        z = self.design(X_frame) if design is None else design
        s0 = self._since(X_frame, since)
        clock = self._clock(X_frame)
        if self.family == "piecewise":
            risks = 1.0 - self._piecewise_ensemble(z, h, s0, clock)
        else:
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
        schedule. Callers must turn ``inf`` into "not reached"; it is never shown as a number.
        """
        grid = np.arange(0.0, 5 * 365.25, 0.25)
        surv = self.predict_survival(X_frame, grid, since)
        below = surv <= 0.5
        idx = np.argmax(below, axis=1)
        return np.where(below.any(axis=1), grid[idx], np.inf)

    def drivers(
        self, X_frame: pd.DataFrame, *, design: np.ndarray | None = None
    ) -> pd.DataFrame:
        """Contribution of each feature to the linear predictor, one column per feature.

        For AFT kinds positive values mean a longer expected benefit (the
        log-time scale); for Cox and piecewise (``HAZARD_FAMILIES``) positive
        values mean a higher hazard (shorter benefit); for piecewise the effect
        is the average over its windows (``coef``; ``window_coef`` holds each
        window's deviation from it). Zero for ``km``.
        """
        if self.encoder is None:
            return pd.DataFrame(index=range(len(X_frame)))
        z = self.design(X_frame) if design is None else design
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

