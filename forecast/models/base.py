"""The common interface of the estimators and the helpers they share.

:class:`SurvivalEstimator` (fit, predict, bootstrap, bundle), the bounds checks,
the patient-level bootstrap weights, the lifelines call wrapper and its
convergence checks, and the as-of clock helpers of the landmark-row kinds.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from forecast.bundle import CLOCK_FEATURES, Bundle, clock_arrays, default_horizons
from forecast.features import FEATURES

#: Smallest lower bound used in log-time models (days).
MIN_LOWER = 1e-3
#: Penalty of ``penalizer="auto"`` for the kinds that do not tune it.
DEFAULT_PENALIZER = 0.01
#: Penalties the landmark model compares by held-out Brier score (``penalizer="auto"``).
#: Heavier penalties (0.1, 0.3) shrink the time interactions towards one effect and worsen
#: the calibration at the first forecast point (see docs/models.md).
PENALIZER_GRID: tuple[float, ...] = (0.01, 0.03)


class ModelFitError(RuntimeError):
    """A model could not be fitted (no events, no convergence, degenerate estimates)."""


@dataclass(frozen=True)
class FeatureSet:
    """A feature specification: numeric columns and categorical columns with fixed levels.

    ``forecast.features.FEATURES`` has the same two attributes; any object with
    ``.numeric`` and ``.categorical`` works (a cohort from another generator
    can bring its own).
    """

    numeric: tuple[str, ...] = ()
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def default_features() -> Any:
    """The project's feature specification (``forecast.features.FEATURES``)."""
    return FEATURES


# --------------------------------------------------------------------------- validation
def check_bounds(lower: Any, upper: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate interval-censored outcomes and return float arrays ``(lower, upper)``.

    Raises ``ValueError`` naming the first offending row when a bound is
    negative, NaN, ``lower`` is infinite, or ``upper < lower``.
    """
    lo = np.asarray(lower, dtype=float).ravel()
    up = np.asarray(upper, dtype=float).ravel()
    if lo.shape != up.shape:
        raise ValueError(f"lower and upper differ in length ({lo.size} vs {up.size})")
    if n is not None and lo.size != n:
        raise ValueError(f"outcomes have {lo.size} rows but X has {n}")
    for name, bad in (
        ("lower is NaN or infinite", ~np.isfinite(lo)),
        ("upper is NaN", np.isnan(up)),
        ("lower is negative", lo < 0),
        ("upper is smaller than lower", up < lo),
    ):
        if bad.any():
            raise ValueError(f"row {int(np.argmax(bad))}: {name}; fix the outcome columns")
    return lo, up


def _prepare_bounds(
    lo: np.ndarray, up: np.ndarray, log_time: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Day-resolution exact events -> (t-1, t]; lower 0 -> MIN_LOWER for log-time models."""
    exact = np.isfinite(up) & (up == lo)
    lo = np.where(exact, np.maximum(up - 1.0, 0.0), lo)
    up = np.where(exact & (up <= MIN_LOWER), 1.0, up)
    return (np.maximum(lo, MIN_LOWER) if log_time else lo), up


def _groups_codes(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has {g.size} entries but X has {n} rows")
    return pd.factorize(g)[0]


def _bootstrap_weights(codes: np.ndarray, n_boot: int, random_state: Any) -> np.ndarray:
    """(n_boot, n) row weights of a patient-level (cluster) bootstrap."""
    rng = np.random.default_rng(random_state)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return counts[:, codes].astype(float)


def _run_lifelines(fn: Any, what: str) -> tuple[Any, list[str]]:
    """Call a lifelines fit; its failures become ModelFitError, its warnings are returned.

    lifelines raises ConvergenceError when the optimiser fails; its
    ConvergenceWarnings (e.g. a column with low variance among the events) are
    advice, kept for the model card, while :func:`_check_estimates` decides.
    """
    from lifelines.exceptions import ConvergenceError  # local: heavy, loaded on first use

    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        try:
            result = fn()
        except (ConvergenceError, np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
            raise ModelFitError(f"{what} did not converge: {str(exc).strip()[:400]}") from exc
    messages = [f"{w.category.__name__}: {str(w.message).strip()[:300]}" for w in caught]
    return result, messages


def _check_estimates(what: str, loglik: float, params: np.ndarray, se: np.ndarray, n_coef: int):
    if not np.isfinite(loglik):
        raise ModelFitError(f"{what}: log-likelihood is not finite")
    if not np.all(np.isfinite(params)):
        raise ModelFitError(f"{what}: some parameters are not finite")
    if se.size and not (np.all(np.isfinite(se)) and np.all(se > 0)):
        raise ModelFitError(f"{what}: standard errors are not finite (singular information)")
    if n_coef > 0 and np.all(np.abs(params[:n_coef]) < 1e-10):
        raise ModelFitError(f"{what}: all coefficients are exactly zero (silent failed fit)")


# --------------------------------------------------------------------------- base class
class SurvivalEstimator(BaseEstimator, ABC):
    """Common interface of the kinds (see the module notes).

    Parameters
    ----------
    features : FeatureSet-like, optional
        Object with ``.numeric`` and ``.categorical``; default
        ``forecast.features.FEATURES``. Ignored by ``km``.
    penalizer : float or "auto"
        L2 penalty of the lifelines fitter (on standardised coefficients, per
        mean log-likelihood as in lifelines). "auto" means 0.01, except for the
        landmark model, which picks it from ``PENALIZER_GRID`` by held-out
        Brier score. The value used is ``penalizer_``.
    n_bootstrap : int
        Number of patient-level bootstrap refits stored for uncertainty bands.
    random_state : int, Generator or None
        Seed of the bootstrap resampling (and of subsampling for model selection).
    n_jobs : int
        Parallel bootstrap refits (joblib).
    max_iter : int
        Iteration limit of the optimiser; reaching it raises ModelFitError.
    horizons : sequence of int, optional
        Default horizons (days) of the bundle; contract horizons if None.
    """

    kind: ClassVar[str] = ""
    time_origin: ClassVar[str] = "episode_start"

    def __init__(
        self,
        features: Any = None,
        penalizer: float | str = "auto",
        n_bootstrap: int = 0,
        random_state: Any = None,
        n_jobs: int = 1,
        max_iter: int = 2000,
        horizons: Sequence[int] | None = None,
    ) -> None:
        self.features = features
        self.penalizer = penalizer
        self.n_bootstrap = n_bootstrap
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.horizons = horizons

    # ---------------------------------------------------------------- fitting
    def fit(self, X: pd.DataFrame, lower: Any, upper: Any, groups: Any = None) -> SurvivalEstimator:
        """Fit the model.

        Parameters
        ----------
        X : DataFrame
            Feature frame (one row per episode or landmark row).
        lower, upper : array-like
            Event interval ``(lower, upper]`` in days; ``upper = inf`` when right-censored.
        groups : array-like, optional
            Patient identifier per row: the bootstrap resamples whole patients.

        Returns
        -------
        self
        """
        if not isinstance(X, pd.DataFrame):
            raise TypeError("X must be a pandas DataFrame of features")
        X = X.reset_index(drop=True)  # lifelines keeps the index on the fitted object
        lo, up = check_bounds(lower, upper, len(X))
        if len(X) == 0:
            raise ModelFitError("no rows to fit")
        if not np.isfinite(up).any():
            raise ModelFitError("no events (every row is right-censored): nothing to learn from")
        if self.n_bootstrap < 0:
            raise ValueError("n_bootstrap must be >= 0")
        if self.penalizer != "auto" and not float(self.penalizer) >= 0:
            raise ValueError("penalizer must be 'auto' or a number >= 0")
        self.penalizer_ = DEFAULT_PENALIZER if self.penalizer == "auto" else float(self.penalizer)
        self.n_rows_ = len(X)
        self.n_events_ = int(np.isfinite(up).sum())
        codes = _groups_codes(groups, len(X))
        self.n_groups_ = int(codes.max()) + 1
        self.fit_warnings_: list[str] = []
        lo, up = _prepare_bounds(lo, up, log_time=self.kind != "km")
        # Many small BLAS calls: threads only contend (measured 50x slower on a busy 2-core box).
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit(X, lo, up)
            self.bootstrap_: dict[str, np.ndarray] = {}
            if self.n_bootstrap > 0:
                weights = _bootstrap_weights(codes, int(self.n_bootstrap), self.random_state)
                self.bootstrap_ = self._bootstrap(X, lo, up, weights)
        return self

    @abstractmethod
    def _fit(self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray) -> None:
        """Implemented by each model kind."""

    def _penalty(self) -> float:
        """The L2 penalty in use: ``penalizer_`` once resolved ("auto" = 0.01 unless tuned)."""
        if hasattr(self, "penalizer_"):
            return float(self.penalizer_)
        return DEFAULT_PENALIZER if self.penalizer == "auto" else float(self.penalizer)

    @abstractmethod
    def _bootstrap(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Implemented by each model kind."""

    def _spec(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        spec = self.features if self.features is not None else default_features()
        numeric = tuple(spec.numeric)
        categorical = {k: tuple(v) for k, v in dict(spec.categorical).items()}
        return numeric, categorical

    def _design(self, X: pd.DataFrame) -> pd.DataFrame:
        """Active design columns of ``X`` as a frame with lifelines-safe names."""
        z = self.encoder_.transform(X.reset_index(drop=True))[:, self.encoder_.active]
        # Zero-padded names: lifelines may order columns by name.
        return pd.DataFrame(z, columns=[f"x{i:04d}" for i in range(z.shape[1])])

    def _full_coef(self, active_coef: np.ndarray) -> np.ndarray:
        full = np.zeros(self.encoder_.active.size)
        full[self.encoder_.active] = active_coef
        return full

    # ---------------------------------------------------------------- prediction
    def predict_survival(
        self, X: pd.DataFrame, times: Sequence[float] | np.ndarray, since: Any = None
    ) -> np.ndarray:
        """Survival probabilities from the lifelines fitter, shape (n, len(times)).

        With ``since`` (days already survived, scalar or per row) the curve is
        conditional: ``S(since + t) / S(since)``.
        """
        check_is_fitted(self)
        times = np.asarray(times, dtype=float).ravel()
        since_arr = None if since is None else np.broadcast_to(
            np.asarray(since, dtype=float), (len(X),)
        ).copy()
        return self._predict_survival(X.reset_index(drop=True), times, since_arr)

    @abstractmethod
    def _predict_survival(
        self, X: pd.DataFrame, times: np.ndarray, since: np.ndarray | None
    ) -> np.ndarray:
        """Implemented by each model kind."""

    def predict_risk(
        self, X: pd.DataFrame, horizons: Sequence[float] | np.ndarray | None = None,
        since: Any = None,
    ) -> np.ndarray:
        """Risk of waning within each horizon, ``1 - S(since + h) / S(since)``, (n, H)."""
        check_is_fitted(self)
        h = self._horizons() if horizons is None else horizons
        return 1.0 - self.predict_survival(X, h, since)

    def _horizons(self) -> tuple[int, ...]:
        return tuple(self.horizons) if self.horizons is not None else default_horizons()

    def to_bundle(self) -> Bundle:
        """The numpy-only serving form of this fitted model."""
        check_is_fitted(self)
        return self._to_bundle()

    @abstractmethod
    def _to_bundle(self) -> Bundle:
        """Implemented by each model kind."""

    def _meta(self) -> dict[str, Any]:
        return {
            "penalizer": self._penalty(),
            "n_bootstrap": int(self.n_bootstrap),
            "random_state": self.random_state if isinstance(self.random_state, int) else None,
            "n_rows": int(self.n_rows_),
            "n_events": int(self.n_events_),
            "n_groups": int(self.n_groups_),
        }

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "n_rows_") and hasattr(self, "bootstrap_")


# --------------------------------------------------------------------------- shared helpers
def _log_entry(entry: np.ndarray | None) -> np.ndarray | None:
    """log of left-truncation times, -inf where there is none (entry 0)."""
    if entry is None:
        return None
    e = np.asarray(entry, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(e > 0, np.log(np.where(e > 0, e, 1.0)), -np.inf)


def _pen_scale(Z: np.ndarray) -> np.ndarray:
    """Column SDs (ddof=1) as lifelines uses them to scale its penalty (1 for constants)."""
    if Z.shape[0] < 2:
        return np.ones(Z.shape[1])
    sd = Z.std(axis=0, ddof=1)
    return np.where(sd > 1e-8, sd, 1.0)


def _clock_spec(numeric: tuple[str, ...], categorical: dict[str, tuple[str, ...]]
                ) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The feature spec of the kinds on an as-of clock: ``days_since_assessment`` is their
    clock (the entry), not a covariate."""
    drop = CLOCK_FEATURES["since_assessment"]
    return tuple(f for f in numeric if f != drop), categorical


def _episode_bounds(
    X: pd.DataFrame, lo: np.ndarray, up: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Residual bounds from the landmark -> (lower, upper, entry, start) from the episode start.

    A residual lower bound of 0 means the last waning-free assessment was on
    or before the landmark: it is the entry itself.
    """
    start, entry = clock_arrays(X)
    lo_ep = np.where(lo <= MIN_LOWER, entry, lo + start)
    lo_ep = np.maximum(np.maximum(lo_ep, entry), MIN_LOWER)
    up_ep = up + start
    up_ep = np.where(up_ep > lo_ep, up_ep, lo_ep + 1.0)
    return lo_ep, up_ep, entry, start
