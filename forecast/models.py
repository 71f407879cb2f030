"""Survival estimators of benefit waning, with scikit-learn conventions.

Every estimator wraps a lifelines fitter (STYLE.md rule 3) behind one
interface: ``__init__`` only stores parameters; ``fit(X, lower, upper,
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
    all-zero coefficients silently, STYLE.md rule 5, so it is not used.)
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
    assessment without waning (:class:`DynamicAFT`). The default until
    2026-12-06.
``piecewise`` (default)
    The same rows on the clock that starts at each row's last assessment
    without waning: a piecewise-exponential hazard whose covariate effects
    may differ by window (:class:`PiecewiseEntry`), fitted by Newton's method
    with the exact Hessian. Chosen as the default for its calibration at 56
    days and on a foreign generator (README, "The piecewise model").

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
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.linalg import LinAlgError, cho_solve, cholesky, solve_triangular
from scipy.optimize import minimize
from scipy.special import expit, log_ndtr, ndtr
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from forecast.bundle import (
    AFT_FAMILIES,
    CLOCK_FEATURES,
    KINDS,
    Bundle,
    Encoder,
    clock_arrays,
    default_horizons,
    window_exposure,
)
from forecast.bundle import (
    DEFAULT_KIND as DEFAULT_KIND,  # re-exported: the kinds' module names the default
)

#: Smallest lower bound used in log-time models (days).
MIN_LOWER = 1e-3
#: Names of the lifelines parameters: (location, ancillary) per AFT family.
_AFT_PARAMS: dict[str, tuple[str, str]] = {
    "weibull": ("lambda_", "rho_"),
    "lognormal": ("mu_", "sigma_"),
    "loglogistic": ("alpha_", "beta_"),
}
#: Penalty of ``penalizer="auto"`` for the kinds that do not tune it.
DEFAULT_PENALIZER = 0.01
#: Penalties the landmark model compares by held-out Brier score (``penalizer="auto"``).
#: 0.1 and 0.3 were dropped with the time interactions: the held-out Brier score over all
#: landmark rows picked 0.1 by margins of about 1e-4, but the heavier penalty shrank the
#: interactions back towards the one-effect model and worsened the calibration at the first
#: forecast point (5-fold CV, 5,000 simulated patients: ICI(28) 0.032 at the picked 0.1
#: against 0.028 at 0.03 and 0.026 at 0.01; 0.3 was worse still on 2,000 patients).
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
    from forecast.features import FEATURES  # lazy: features imports the whole data stack

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
    from lifelines.exceptions import ConvergenceError

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


# --------------------------------------------------------------------------- AFT objective
def _aft_sign(family: str) -> float:
    # u = c (log t - eta), c = exp(sign * g): lifelines' rho/beta multiply, sigma divides.
    return -1.0 if family == "lognormal" else 1.0


def _std_surv(family: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard survival S0(u) and its derivative dS0/du (0 at u = +inf)."""
    fin = np.isfinite(u)
    uf = np.where(fin, u, 0.0)
    if family == "weibull":
        eu = np.exp(np.minimum(uf, 700.0))
        s, ds = np.exp(-eu), -eu * np.exp(-eu)
    elif family == "lognormal":
        s, ds = ndtr(-uf), -np.exp(-0.5 * uf**2) / np.sqrt(2 * np.pi)
    else:
        s, ds = expit(-uf), -expit(uf) * expit(-uf)
    return np.where(fin, s, 0.0), np.where(fin, ds, 0.0)


def _std_log_surv(family: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log S0(u) and d log S0 / du, computed without forming S0 (no underflow)."""
    if family == "weibull":
        eu = np.exp(np.minimum(u, 700.0))
        return -eu, -eu
    if family == "lognormal":
        log_s = log_ndtr(-u)
        return log_s, -np.exp(-0.5 * u**2 - 0.5 * np.log(2 * np.pi) - log_s)
    # log-logistic: one exp serves both, log S0 = -log(1 + e^u), d/du = -expit(u)
    e = np.exp(-np.abs(u))
    one_e = 1.0 + e
    log_s = -(np.maximum(u, 0.0) + np.log1p(e))
    return log_s, -np.where(u >= 0, 1.0, e) / one_e


def aft_objective(
    theta: np.ndarray,
    family: str,
    Z: np.ndarray,
    log_lo: np.ndarray,
    log_up: np.ndarray,
    w: np.ndarray,
    pen_scale: np.ndarray,
    penalizer: float,
    W: np.ndarray | None = None,
    anc_scale: np.ndarray | None = None,
    log_entry: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Penalised mean negative interval-censored log-likelihood of an AFT model and its gradient.

    The same objective lifelines minimises: weighted mean log-likelihood plus
    ``0.5 * penalizer * sum((coef * sd)^2)`` over the coefficients in units of
    their column SD; intercepts of parameters that have covariates are not
    penalised (the ancillary intercept is penalised when the ancillary
    parameter has no covariates, as in lifelines). Analytic gradients make
    bootstrap refits fast. ``theta = [beta (p), intercept, g0, gamma (q)]``
    where the log ancillary parameter of row i is ``g0 + W[i] . gamma``.
    ``log_entry`` (log days, -inf for none) left-truncates each row: its
    contribution becomes ``log(S(lo) - S(up)) - log S(entry)`` (the row is
    known to have survived to ``entry``), lifelines' ``entry_col``.
    """
    p = Z.shape[1]
    q = 0 if W is None else W.shape[1]
    beta, b0, g0 = theta[:p], theta[p], theta[p + 1]
    gamma = theta[p + 2:]
    sign = _aft_sign(family)
    g = g0 + W @ gamma if q else np.full(len(Z), g0)
    c = np.exp(sign * g)
    eta = b0 + Z @ beta
    u_l = c * (log_lo - eta)
    u_u = np.where(np.isfinite(log_up), c * (log_up - eta), np.inf)
    if log_entry is None:
        s_l, ds_l = _std_surv(family, u_l)
        s_u, ds_u = _std_surv(family, u_u)
        d = np.clip(s_l - s_u, 1e-25, 1 - 1e-25)
        ll = np.log(d)
        with np.errstate(invalid="ignore"):  # inf * 0 at right-censored rows, masked out
            uds_u = np.where(np.isfinite(u_u), u_u * ds_u, 0.0)
        d_eta = -c * (ds_l - ds_u) / d
        d_g = sign * (u_l * ds_l - uds_u) / d
    else:
        # Left-truncated rows can sit far in a tail where S underflows: all in logs,
        # log(S_l - S_u) = log S_l + log1p(-r), r = S_u / S_l.
        # Work on the subsets that need it: rows with an event (finite upper) and
        # rows with an entry; the rest are right-censored / not truncated.
        ll, a_l = _std_log_surv(family, u_l)  # log S_l and d ll / d u_l so far
        du = np.zeros_like(u_l)  # (d ll / d u_u) * u_u, for d_g
        d_eta = a_l.copy()
        fi = np.flatnonzero(np.isfinite(u_u))
        if fi.size:
            uf = u_u[fi]
            log_u, dl_u = _std_log_surv(family, uf)
            r = np.minimum(np.exp(np.minimum(log_u - ll[fi], 0.0)), 1.0 - 1e-15)
            inv = 1.0 / (1.0 - r)
            ll[fi] += np.log1p(-r)
            a_l[fi] *= inv
            a_u = -r * dl_u * inv
            d_eta[fi] = a_l[fi] + a_u
            du[fi] = uf * a_u
        d_g = u_l * a_l + du
        ei = np.flatnonzero(np.isfinite(log_entry))
        if ei.size:
            u_e = c[ei] * (log_entry[ei] - eta[ei])
            log_s_e, dlog_e = _std_log_surv(family, u_e)
            ll[ei] -= log_s_e
            d_eta[ei] -= dlog_e
            d_g[ei] -= u_e * dlog_e
        d_eta *= -c
        d_g *= sign
    sw = w.sum()
    f = -(w @ ll) / sw
    grad = np.empty_like(theta)
    grad[:p] = -(Z.T @ (w * d_eta)) / sw
    grad[p] = -(w @ d_eta) / sw
    grad[p + 1] = -(w @ d_g) / sw
    bs = beta * pen_scale
    f += 0.5 * penalizer * (bs @ bs)
    grad[:p] += penalizer * beta * pen_scale**2
    if q:
        grad[p + 2:] = -(W.T @ (w * d_g)) / sw
        gs = gamma * anc_scale
        f += 0.5 * penalizer * (gs @ gs)
        grad[p + 2:] += penalizer * gamma * anc_scale**2
    else:
        f += 0.5 * penalizer * g0 * g0
        grad[p + 1] += penalizer * g0
    return float(f), grad


def _aft_refit(
    family: str,
    theta0: np.ndarray,
    Z: np.ndarray,
    log_lo: np.ndarray,
    log_up: np.ndarray,
    w: np.ndarray,
    pen_scale: np.ndarray,
    penalizer: float,
    max_iter: int,
    W: np.ndarray | None = None,
    anc_scale: np.ndarray | None = None,
    log_entry: np.ndarray | None = None,
) -> np.ndarray:
    keep = w > 0
    args = (family, Z[keep], log_lo[keep], log_up[keep], w[keep], pen_scale, penalizer,
            None if W is None else W[keep], anc_scale,
            None if log_entry is None else log_entry[keep])
    # Also in joblib workers: many small BLAS calls only contend when threaded.
    with threadpool_limits(limits=1, user_api="blas"), np.errstate(all="ignore"):
        res = minimize(
            aft_objective, theta0, args=args, jac=True, method="L-BFGS-B",
            options={"maxiter": max_iter},
        )
    if not np.all(np.isfinite(res.x)):
        raise ModelFitError(f"bootstrap refit of the {family} model gave non-finite parameters")
    return res.x


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


# --------------------------------------------------------------------------- AFT kinds
def _lifelines_fitters() -> dict[str, Any]:
    from lifelines import LogLogisticAFTFitter, LogNormalAFTFitter, WeibullAFTFitter

    return {"weibull": WeibullAFTFitter, "lognormal": LogNormalAFTFitter,
            "loglogistic": LogLogisticAFTFitter}


_SEEDED: dict[str, Any] = {}


def _zero_layout(self: Any, Ts: Any, E: Any, entries: Any, weights: Any,
                 Xs: Any) -> dict[str, np.ndarray]:
    """The parameters' layout with zeros (lifelines' ``ParametricRegressionFitter``'s)."""
    return {name: np.zeros(len(Xs[name].columns)) for name in self._fitted_parameter_names}


def _seeded_fitters() -> dict[str, Any]:
    """lifelines AFT fitters that take the caller's start as it is.

    lifelines' AFT fitters fit a univariate model for a start point even when
    ``initial_point`` is given, and only use it for the parameters' layout
    (``_prepare_initial_points`` in lifelines 0.30). With interval censoring
    and left truncation that univariate fit can fail to converge (a 5,000-
    patient simulated cohort, and the foreign generator's seed 8, with the
    log-normal family), failing a regression fit whose optimum we already
    have. These subclasses give the layout with zeros, as lifelines' generic
    ``ParametricRegressionFitter`` does; lifelines still runs its own
    optimiser from our start and its result is checked as before.
    Module-level classes, so that fitted estimators stay picklable.
    """
    if not _SEEDED:
        for family, cls in _lifelines_fitters().items():
            name = f"Seeded{cls.__name__}"
            sub = type(name, (cls,), {"_create_initial_point": _zero_layout,
                                      "__module__": __name__, "__qualname__": name})
            globals()[name] = sub
            _SEEDED[family] = sub
    return _SEEDED


class AFTEstimator(SurvivalEstimator):
    """Static parametric AFT model from the episode start with true interval censoring.

    The optimum is found with an analytic-gradient L-BFGS on the same
    penalised objective as lifelines (:func:`aft_objective`, fast), then the
    lifelines fitter is run from that point: it confirms the optimum and
    provides the log-likelihood, standard errors and the reference
    predictions the bundle is tested against.
    """

    family: ClassVar[str] = "weibull"

    def _family(self) -> str:
        return self.family

    def _lifelines_class(self, family: str, seeded: bool = False) -> Any:
        """lifelines' AFT fitter of ``family``; ``seeded``: the variant for a given start."""
        return _seeded_fitters()[family] if seeded else _lifelines_fitters()[family]

    def _anc_features(self) -> tuple[str, ...]:
        return tuple(getattr(self, "ancillary_features", None) or ())

    def _anc_index(self) -> np.ndarray:
        """Indices (into the full design) of the active ancillary columns."""
        names = self._anc_features()
        cols = self.encoder_.columns
        idx = [cols.index(n) for n in names if n in cols and self.encoder_.active[cols.index(n)]]
        return np.asarray(idx, dtype=np.intp)

    def _numpy_fit(
        self, family: str, Z: np.ndarray, lo: np.ndarray, up: np.ndarray,
        W: np.ndarray | None = None, entry: np.ndarray | None = None,
        theta0: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float]:
        """Penalised MLE by L-BFGS; returns (theta, penalised log-likelihood sum).

        ``entry`` (days, 0 for none) left-truncates the rows (see :func:`aft_objective`);
        ``theta0`` is a starting point (e.g. the fit on a subsample), zeros otherwise.
        """
        q = 0 if W is None else W.shape[1]
        if theta0 is None:
            mid = np.where(np.isfinite(up), 0.5 * (lo + np.where(np.isfinite(up), up, 0.0)), lo)
            theta0 = np.zeros(Z.shape[1] + 2 + q)
            theta0[Z.shape[1]] = np.log(max(float(np.mean(mid)), 1.0)) + 0.5
        w = np.ones(len(Z))
        args = (family, Z, np.log(lo), np.log(up), w, _pen_scale(Z), self._penalty(),
                W, None if W is None else _pen_scale(W), _log_entry(entry))
        with np.errstate(all="ignore"):
            res = minimize(aft_objective, theta0, args=args, jac=True, method="L-BFGS-B",
                           options={"maxiter": int(self.max_iter)})
        what = f"{family} AFT model"
        if not res.success:
            raise ModelFitError(f"{what} did not converge: {res.message}")
        if not np.isfinite(res.fun):
            raise ModelFitError(f"{what}: log-likelihood is not finite")
        return res.x, -float(res.fun) * len(Z)

    def _fit_family(
        self, family: str, df: pd.DataFrame, W: pd.DataFrame | None = None,
        theta: np.ndarray | None = None,
    ) -> tuple[Any, list[str]]:
        """lifelines fit (from ``theta`` when given); ``W`` = ancillary covariates (a-columns).

        ``df`` holds the design columns, then ``lower``, ``upper`` and, for a
        left-truncated fit, ``entry`` (lifelines' ``entry_col``).
        """
        fitter = self._lifelines_class(family, seeded=theta is not None)(
            penalizer=self._penalty())
        what = f"{family} AFT model"
        names = [c for c in df.columns if c not in ("lower", "upper", "entry")]
        anames = [] if W is None else list(W.columns)
        loc, anc = _AFT_PARAMS[family]
        init = None
        if theta is not None:
            # lifelines optimises coefficients of columns divided by their SD; columns in
            # sorted-name order (zero-padded names keep ours), intercept last.
            p, q = len(names), len(anames)
            sd = _pen_scale(df[names].to_numpy())
            asd = _pen_scale(W.to_numpy()) if q else np.ones(0)
            init = {loc: np.r_[theta[:p] * sd, theta[p]],
                    anc: np.r_[theta[p + 2:] * asd, theta[p + 1]]}
        kwargs: dict[str, Any] = {"initial_point": init,
                                  "fit_options": {"maxiter": int(self.max_iter)}}
        if W is not None and len(anames):
            kwargs["ancillary"] = W
        if "entry" in df.columns:
            kwargs["entry_col"] = "entry"
        fitter, msgs = _run_lifelines(
            lambda: fitter.fit_interval_censoring(df, "lower", "upper", **kwargs), what)
        vec = self._theta_of(fitter, family, names, anames)
        _check_estimates(what, fitter.log_likelihood_, vec, fitter.standard_errors_.to_numpy(),
                         len(names))
        return fitter, msgs

    @staticmethod
    def _theta_of(fitter: Any, family: str, names: list[str], anames: list[str]) -> np.ndarray:
        loc, anc = _AFT_PARAMS[family]
        params = fitter.params_
        return np.r_[
            [params.loc[(loc, c)] for c in names],
            params.loc[(loc, "Intercept")],
            params.loc[(anc, "Intercept")],
            [params.loc[(anc, c)] for c in anames],
        ].astype(float)

    def _ancillary_frame(self, z_full: np.ndarray) -> pd.DataFrame | None:
        if self.anc_index_.size == 0:
            return None
        return pd.DataFrame(z_full[:, self.anc_index_],
                            columns=[f"a{i:04d}" for i in range(self.anc_index_.size)])

    def _interactions(self, X: pd.DataFrame, numeric: tuple[str, ...]) -> tuple[str, ...]:
        """Numeric features whose effect may change with the time since the episode start."""
        return ()

    def _fit(self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray) -> None:
        numeric, categorical = self._spec()
        inter = self._interactions(X, numeric)
        self.encoder_ = Encoder.fit(X, numeric, categorical,
                                    time_feature=getattr(self, "time_feature", None)
                                    if inter else None,
                                    time_interactions=inter)
        self.anc_index_ = self._anc_index()
        z_full = self.encoder_.transform(X)
        df = self._design(X)
        names = list(df.columns)
        Z = np.ascontiguousarray(df.to_numpy(dtype=float))
        Wdf = self._ancillary_frame(z_full)
        W = None if Wdf is None else np.ascontiguousarray(Wdf.to_numpy())
        lo, up, self._entry, self._start = self._clock_rows(X, lo, up)
        df["lower"], df["upper"] = lo, up
        if self._entry is not None:
            df["entry"] = self._entry
        self._warm: np.ndarray | None = None
        family, theta = self._choose_family(Z, lo, up, W)
        if theta is None:
            theta, _ = self._numpy_fit(family, Z, lo, up, W, self._entry, self._warm)
        try:
            self.fitter_, msgs = self._fit_family(family, df, Wdf, theta)
        except ModelFitError as exc:
            # lifelines must confirm the optimum (and give the reference predictions).
            # With the family chosen by the data ("auto"), a family lifelines cannot
            # fit is dropped for the next best; a fixed family fails loudly.
            ranked = self._ranked_families(family)
            if not ranked:
                raise
            rejected = {family: str(exc)[:200]}
            for family in ranked:
                try:
                    theta, _ = self._numpy_fit(family, Z, lo, up, W, self._entry)
                    self.fitter_, msgs = self._fit_family(family, df, Wdf, theta)
                    break
                except ModelFitError as exc2:
                    rejected[family] = str(exc2)[:200]
            else:
                raise ModelFitError("no AFT family could be confirmed by lifelines: "
                                    + "; ".join(f"{k}: {v}" for k, v in rejected.items()))
            self.selection_["family"] = family
            self.selection_["rejected_by_lifelines"] = rejected
            msgs = [*msgs, f"lifelines could not fit {', '.join(rejected)}; used {family}"]
        self.family_ = family
        self.fit_warnings_ += msgs
        vec = self._theta_of(self.fitter_, family, names, [] if Wdf is None else list(Wdf))
        p = len(names)
        self.coef_ = self._full_coef(vec[:p])
        self.intercept_ = float(vec[p])
        self.ancillary_ = float(vec[p + 1])
        self.anc_coef_ = vec[p + 2:]
        self.log_likelihood_ = float(self.fitter_.log_likelihood_)
        self.aic_ = float(self.fitter_.AIC_)
        self._pen_scale = _pen_scale(Z) if p else np.ones(0)
        self._anc_scale = None if W is None else _pen_scale(W)
        self._fit_bounds = (lo, up)

    def _ranked_families(self, failed: str) -> list[str]:
        """Other families in the order of the selection score (empty for a fixed family)."""
        sel = getattr(self, "selection_", None) or {}
        score = sel.get("cv_brier") or sel.get("aic") or {}
        if getattr(self, "distribution", None) != "auto" or not score:
            return []
        return [f for f in sorted(score, key=score.__getitem__) if f != failed]

    def _clock_rows(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(lower, upper, entry, start) the likelihood uses; no truncation here."""
        return lo, up, None, None

    def _choose_family(
        self, Z: np.ndarray, lo: np.ndarray, up: np.ndarray, W: np.ndarray | None = None
    ) -> tuple[str, np.ndarray | None]:
        return self._family(), None

    def _bootstrap(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        active = self.encoder_.active
        z_full = self.encoder_.transform(X)
        Z = np.ascontiguousarray(z_full[:, active])
        W = np.ascontiguousarray(z_full[:, self.anc_index_]) if self.anc_index_.size else None
        theta0 = np.concatenate([self.coef_[active], [self.intercept_, self.ancillary_],
                                 self.anc_coef_])
        lo, up = self._fit_bounds
        log_lo, log_up = np.log(lo), np.log(up)
        log_entry = _log_entry(self._entry)
        fits = Parallel(n_jobs=self.n_jobs)(
            delayed(_aft_refit)(
                self.family_, theta0, Z, log_lo, log_up, w, self._pen_scale,
                self._penalty(), int(self.max_iter), W, self._anc_scale, log_entry,
            )
            for w in weights
        )
        thetas = np.vstack(fits)
        p = Z.shape[1]
        coef = np.zeros((len(thetas), active.size))
        coef[:, active] = thetas[:, :p]
        out = {
            "boot_coef": coef,
            "boot_intercept": thetas[:, p],
            "boot_ancillary": thetas[:, p + 1],
        }
        if self.anc_index_.size:
            out["boot_anc_coef"] = thetas[:, p + 2:]
        return out

    def lifelines_input(self, X: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The (design, ancillary) frames lifelines' predict methods need for ``X``."""
        check_is_fitted(self)
        df = self._design(X)
        Wdf = self._ancillary_frame(self.encoder_.transform(X))
        return (df if Wdf is None else pd.concat([df, Wdf], axis=1)), Wdf

    def _predict_survival(
        self, X: pd.DataFrame, times: np.ndarray, since: np.ndarray | None
    ) -> np.ndarray:
        df, Wdf = self.lifelines_input(X)
        with np.errstate(all="ignore"):
            sf = self.fitter_.predict_survival_function(
                df, times=times, conditional_after=since, ancillary=Wdf)
        return sf.to_numpy().T

    def _to_bundle(self) -> Bundle:
        arrays = {
            "coef": self.coef_.copy(),
            "intercept": np.asarray(self.intercept_),
            "ancillary": np.asarray(self.ancillary_),
            **{k: v.copy() for k, v in self.bootstrap_.items()},
        }
        if self.anc_index_.size:
            arrays["anc_index"] = self.anc_index_.astype(float)
            arrays["anc_coef"] = self.anc_coef_.copy()
        meta = {**self._meta(), "log_likelihood": self.log_likelihood_, "aic": self.aic_}
        if self.anc_index_.size:
            cols = self.encoder_.columns
            meta["ancillary_covariates"] = [cols[i] for i in self.anc_index_]
        if getattr(self, "selection_", None):
            meta["family_selection"] = self.selection_
        return Bundle(self.kind, self.family_, self.time_origin, self._horizons(),
                      self.encoder_, arrays, meta)


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


class WeibullAFT(AFTEstimator):
    """Static Weibull AFT (``--kind weibull``)."""

    kind = "weibull"
    family = "weibull"


class LogNormalAFT(AFTEstimator):
    """Static log-normal AFT (``--kind lognormal``)."""

    kind = "lognormal"
    family = "lognormal"


class LogLogisticAFT(AFTEstimator):
    """Static log-logistic AFT (``--kind loglogistic``)."""

    kind = "loglogistic"
    family = "loglogistic"


def varying_within(X: pd.DataFrame, names: Sequence[str], by: str = "episode_id"
                   ) -> tuple[str, ...]:
    """The numeric features of ``names`` that change within some group ``by`` of ``X``.

    Found from the data, not from a list of names: on landmark rows these are
    the features that move during an episode (the latest PHQ-9, the response
    state, ...). Without a ``by`` column every feature of ``names`` counts.
    """
    if by not in X.columns or len(X) == 0:
        return tuple(names)
    codes = pd.factorize(X[by])[0]
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    out = []
    for name in names:
        v = pd.to_numeric(X[name], errors="coerce").to_numpy(dtype=float)[order]
        v = np.where(np.isnan(v), -np.inf, v)
        if not np.array_equal(np.maximum.reduceat(v, starts), np.minimum.reduceat(v, starts)):
            out.append(name)
    return tuple(out)


class LandmarkAFT(AFTEstimator):
    """Residual-time landmark model (``--kind landmark``; the default until 2026-11-27).

    Fit it on ``forecast.features.landmark_dataset`` rows (features at the
    landmark, residual interval from the landmark); predict with the features
    at the as-of date and ``since=None``.

    Parameters
    ----------
    distribution : {"auto", "weibull", "lognormal", "loglogistic"}
        AFT family; "auto" picks it by ``selection``.
    selection : {"cv", "aic"}
        How "auto" picks the family: "cv" (default) = lowest held-out Brier
        score over the horizons (patient-grouped 2-fold split, rows with a
        known status at each horizon); "aic" = lowest AIC. On simulated data
        AIC of the stacked rows preferred the Weibull family, whose risks at
        the episode start were the worst calibrated of the three, so the
        default judges families by their predictions instead.
    select_max_groups : int
        With "auto", the families are compared on at most this many patients
        (a seeded subsample) to keep training fast on large cohorts.
    ancillary_features : tuple of str or None
        Numeric features on which the AFT shape (ancillary) parameter depends
        linearly on the log scale; by default the time since the episode
        start and whether the response is known yet, because the residual
        time distribution changes shape over an episode (a single shape for
        all landmarks under-predicted long-horizon risks at the start by
        0.13-0.19 in cross-validation on simulated data). Features absent
        from the spec are ignored.
    time_feature : str or None
        Numeric feature measuring the time since the episode start
        (``elapsed_days``); None switches the interactions off.
    time_interactions : "dynamic", tuple of str or None
        Features whose effect on the log-time location may change with
        ``log(1 + time_feature)``: each adds a design column ``feature *
        log(1 + time_feature)``. "dynamic" (default) takes the numeric
        features that change within an episode in the training rows
        (found from the data, ``varying_within``). Without them one effect
        per feature had to serve both the episode start (response unknown)
        and the response assessment a few days later, and the risks at the
        first forecast point were over-predicted (ICI at 28 days 0.047
        against 0.029 with them, 3-fold CV on 2,000 simulated patients).
    Other parameters as :class:`SurvivalEstimator`.
    """

    kind = "landmark"
    time_origin = "landmark"

    def __init__(
        self,
        features: Any = None,
        penalizer: float | str = "auto",
        n_bootstrap: int = 0,
        random_state: Any = None,
        n_jobs: int = 1,
        max_iter: int = 2000,
        horizons: Sequence[int] | None = None,
        distribution: str = "auto",
        select_max_groups: int = 5000,
        ancillary_features: tuple[str, ...] | None = ("elapsed_days", "response_known"),
        selection: str = "cv",
        time_feature: str | None = "elapsed_days",
        time_interactions: str | tuple[str, ...] | None = "dynamic",
    ) -> None:
        super().__init__(features, penalizer, n_bootstrap, random_state, n_jobs, max_iter,
                         horizons)
        self.distribution = distribution
        self.select_max_groups = select_max_groups
        self.ancillary_features = ancillary_features
        self.selection = selection
        self.time_feature = time_feature
        self.time_interactions = time_interactions

    def fit(self, X: pd.DataFrame, lower: Any, upper: Any, groups: Any = None) -> LandmarkAFT:
        """Fit on stacked landmark rows; ``groups`` (patient ids) drive subsampling, bootstrap."""
        self._groups = None if groups is None else np.asarray(groups)
        try:
            return super().fit(X, lower, upper, groups)  # type: ignore[return-value]
        finally:
            self._groups = None

    def _interactions(self, X: pd.DataFrame, numeric: tuple[str, ...]) -> tuple[str, ...]:
        """The features interacted with ``log(1 + time_feature)`` (see ``time_interactions``)."""
        t = self.time_feature
        spec = self.time_interactions
        if t is None or spec is None or t not in numeric:
            return ()
        if spec == "dynamic":
            return varying_within(X, tuple(f for f in numeric if f != t))
        if isinstance(spec, str):
            raise ValueError("time_interactions must be 'dynamic', None or a tuple of names")
        return tuple(f for f in spec if f in numeric and f != t)

    def _choose_family(
        self, Z: np.ndarray, lo: np.ndarray, up: np.ndarray, W: np.ndarray | None = None
    ) -> tuple[str, np.ndarray | None]:
        if self.distribution != "auto":
            if self.distribution not in AFT_FAMILIES:
                raise ValueError(
                    f"distribution must be 'auto' or one of {AFT_FAMILIES}, "
                    f"got {self.distribution!r}"
                )
            self.selection_ = {"method": "fixed", "family": self.distribution}
            return self.distribution, None
        codes = _groups_codes(self._groups, len(Z))
        n_groups = int(codes.max()) + 1
        rows = np.ones(len(Z), dtype=bool)
        rng = np.random.default_rng(self.random_state)
        if n_groups > self.select_max_groups:
            chosen = rng.choice(n_groups, size=int(self.select_max_groups), replace=False)
            rows = np.isin(codes, chosen)
        if self.selection not in ("cv", "aic"):
            raise ValueError(f"selection must be 'cv' or 'aic', got {self.selection!r}")
        Ws = None if W is None else W[rows]
        aic: dict[str, float] = {}
        cv: dict[str, float] = {}
        thetas: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        k = Z.shape[1] + 2 + (0 if W is None else W.shape[1])
        # Patient-grouped 2-fold split of the compared rows (seeded).
        sub_codes = pd.factorize(codes[rows])[0]
        half = rng.permutation(int(sub_codes.max()) + 1) % 2
        fold = half[sub_codes]
        Zs, los, ups = Z[rows], lo[rows], up[rows]
        clock = None if self._entry is None else (self._entry[rows], self._start[rows])
        ents = None if clock is None else clock[0]
        for fam in AFT_FAMILIES:
            try:
                thetas[fam], ll = self._numpy_fit(fam, Zs, los, ups, Ws, ents)
                aic[fam] = 2.0 * k - 2.0 * ll
                if self.selection == "cv":
                    cv[fam] = self._cv_brier(fam, Zs, los, ups, Ws, fold, clock)
            except ModelFitError as exc:
                errors[fam] = str(exc)[:200]
        score = cv if self.selection == "cv" else aic
        if not score:
            raise ModelFitError("no AFT family could be fitted: " + "; ".join(errors.values()))
        best = min(score, key=score.__getitem__)
        self.selection_ = {
            "method": "CV Brier" if self.selection == "cv" else "AIC",
            "family": best,
            "aic": aic,
            "failed": errors,
            "n_rows_compared": int(rows.sum()),
        }
        if cv:
            self.selection_["cv_brier"] = cv
        theta = thetas[best] if rows.all() else None
        self._warm = thetas[best]  # the full fit starts from the subsample's optimum
        if self.penalizer == "auto" and self.selection == "cv":
            # Then the penalty, for the chosen family, by the same held-out score.
            grid = {self.penalizer_: cv[best]}
            for pen in PENALIZER_GRID:
                if pen not in grid:
                    self.penalizer_ = pen
                    grid[pen] = self._cv_brier(best, Zs, los, ups, Ws, fold, clock)
            self.penalizer_ = min(grid, key=grid.__getitem__)
            self.selection_["penalizer_cv_brier"] = {str(k): v for k, v in grid.items()}
            self.selection_["penalizer"] = self.penalizer_
            if self.penalizer_ != DEFAULT_PENALIZER:
                theta = None  # refit at the chosen penalty
        return best, theta

    def _cv_brier(self, family: str, Z: np.ndarray, lo: np.ndarray, up: np.ndarray,
                  W: np.ndarray | None, fold: np.ndarray,
                  clock: tuple[np.ndarray, np.ndarray] | None = None) -> float:
        """Held-out Brier score over the horizons on rows whose status at h is known.

        Status at h is known when ``upper <= h`` (waned) or ``lower >= h`` (not
        waned); the score compares families on identical rows, so the
        censoring pattern affects all of them alike. With ``clock = (entry,
        start)`` the bounds count from the episode start, the rows are
        left-truncated at ``entry`` and the risk at h is the risk within h
        days after ``start`` (the as-of date of the row), as served.
        """
        from forecast.bundle import aft_log_survival

        h = np.asarray(self._horizons(), dtype=float)
        total, count = 0.0, 0
        for k in (0, 1):
            tr, te = fold != k, fold == k
            if not tr.any() or not te.any():
                continue
            try:
                theta, _ = self._numpy_fit(family, Z[tr], lo[tr], up[tr],
                                           None if W is None else W[tr],
                                           None if clock is None else clock[0][tr])
            except ModelFitError:  # a half that cannot be fitted disqualifies the family
                return float("inf")
            p = Z.shape[1]
            eta = theta[p] + Z[te] @ theta[:p]
            g = theta[p + 1] + (W[te] @ theta[p + 2:] if W is not None else 0.0)
            g = np.broadcast_to(np.asarray(g, dtype=float), eta.shape)
            lo_r, up_r = lo[te], up[te]
            if clock is None:
                log_s = aft_log_survival(family, np.log(h)[None, :], eta[:, None], g[:, None])
            else:
                ent, start = clock[0][te], clock[1][te]
                log_e = _log_entry(ent)[:, None]
                log_s = (aft_log_survival(family, np.log(start[:, None] + h[None, :]),
                                          eta[:, None], g[:, None])
                         - aft_log_survival(family, log_e, eta[:, None], g[:, None]))
                lo_r, up_r = np.maximum(lo_r - start, 0.0), up_r - start
            risk = 1.0 - np.exp(np.minimum(log_s, 0.0))
            status = np.where(up_r[:, None] <= h, 1.0, np.where(lo_r[:, None] >= h, 0.0, np.nan))
            known = ~np.isnan(status)
            total += float(np.sum((risk[known] - status[known]) ** 2))
            count += int(known.sum())
        return total / count if count else float("inf")


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


class DynamicAFT(LandmarkAFT):
    """Dynamic model on the episode's time scale (``--kind dynamic``; the default until 2026-12-06).

    Fitted on the same landmark rows as :class:`LandmarkAFT` (features at the
    landmark, history up to it only), but the outcome keeps the episode's own
    clock: the row's waning time lies in ``(lower, upper]`` days after the
    episode start, and the row is **left-truncated** at ``entry``, the last
    assessment up to the landmark that showed no waning (0 before the first
    one). Its likelihood is ``(S(lower) - S(upper)) / S(entry)`` given the
    landmark's features. At serving, with ``start`` = days from the episode
    start to the as-of date, the risk within h days is

        1 - S(start + h | x) / S(entry | x),

    which counts a waning between the last reassuring assessment and as-of
    that nobody has seen yet from the model's own hazard, instead of asking
    a residual-time distribution to bend around it. The bundle reads
    ``start`` and ``entry`` from the features (``forecast.bundle.clock_arrays``:
    ``elapsed_days``, ``days_since_assessment``, ``n_assessments_since_session``);
    ``days_since_assessment`` therefore is not a covariate of the location.

    Why: the residual-time landmark model over-predicted the 28-day risk on a
    cohort of an independent generator by 0.05-0.08 against its latent truth
    (bench/foreign_check.py), most at 14-70 days after the session; on the
    same cohorts this formulation was within 0.02 (README, foreign check).

    Parameters as :class:`LandmarkAFT`; the ancillary (shape) covariates
    default to ``response_known`` only, the time scale itself carrying the
    change of shape over an episode.
    """

    kind = "dynamic"
    time_origin = "as_of"

    def __init__(
        self,
        features: Any = None,
        penalizer: float | str = "auto",
        n_bootstrap: int = 0,
        random_state: Any = None,
        n_jobs: int = 1,
        max_iter: int = 2000,
        horizons: Sequence[int] | None = None,
        distribution: str = "auto",
        select_max_groups: int = 5000,
        ancillary_features: tuple[str, ...] | None = ("response_known",),
        selection: str = "cv",
        time_feature: str | None = "elapsed_days",
        time_interactions: str | tuple[str, ...] | None = "dynamic",
    ) -> None:
        super().__init__(features, penalizer, n_bootstrap, random_state, n_jobs, max_iter,
                         horizons, distribution, select_max_groups, ancillary_features,
                         selection, time_feature, time_interactions)

    def _spec(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        return _clock_spec(*super()._spec())

    def _clock_rows(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Residual bounds from the landmark -> bounds from the episode start, plus entry.

        A residual lower bound of 0 means the last waning-free assessment was on
        or before the landmark: it is the entry itself.
        """
        return _episode_bounds(X, lo, up)

    def _predict_survival(
        self, X: pd.DataFrame, times: np.ndarray, since: np.ndarray | None
    ) -> np.ndarray:
        """lifelines: ``S(start + since + t) / S(cond)`` per row (grouped by the gap)."""
        df, Wdf = self.lifelines_input(X)
        start, entry = clock_arrays(X.reset_index(drop=True))
        s = np.zeros(len(df)) if since is None else np.broadcast_to(
            np.asarray(since, dtype=float), (len(df),))
        base = start + s
        cond = np.where(s > 0, base, entry)
        gap = base - cond
        out = np.empty((len(df), len(times)))
        for g in np.unique(gap):
            rows = np.flatnonzero(gap == g)
            with np.errstate(all="ignore"):
                sf = self.fitter_.predict_survival_function(
                    df.iloc[rows], times=g + np.asarray(times, dtype=float),
                    conditional_after=cond[rows],
                    ancillary=None if Wdf is None else Wdf.iloc[rows])
            out[rows] = sf.to_numpy().T
        return out

    def _to_bundle(self) -> Bundle:
        bundle = super()._to_bundle()
        bundle.meta["clock"] = dict(CLOCK_FEATURES)
        return bundle


# --------------------------------------------------------------------------- Cox
class CoxPH(SurvivalEstimator):
    """Static Cox PH from the episode start (``--kind cox``; midpoint imputation, see module)."""

    kind = "cox"

    @staticmethod
    def _impute(lo: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        event = np.isfinite(up)
        t = np.where(event, 0.5 * (lo + np.where(event, up, 0.0)), lo)
        return np.maximum(t, MIN_LOWER), event.astype(float)

    def _fit_cox(self, df: pd.DataFrame, weights: bool = False) -> tuple[Any, list[str]]:
        from lifelines import CoxPHFitter

        fitter = CoxPHFitter(penalizer=self._penalty())
        kwargs: dict[str, Any] = {"fit_options": {"max_steps": int(self.max_iter)}}
        if weights:
            kwargs["weights_col"] = "w"
        return _run_lifelines(lambda: fitter.fit(df, "T", "E", **kwargs), "Cox model")

    def _fit(self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray) -> None:
        numeric, categorical = self._spec()
        self.encoder_ = Encoder.fit(X, numeric, categorical)
        df = self._design(X)
        p = df.shape[1]
        df["T"], df["E"] = self._impute(lo, up)
        self.fitter_, msgs = self._fit_cox(df)
        self.fit_warnings_ += msgs
        params = self.fitter_.params_.to_numpy(dtype=float)
        _check_estimates("Cox model", self.fitter_.log_likelihood_, params,
                         self.fitter_.standard_errors_.to_numpy(), p)
        self.coef_ = self._full_coef(params)
        self.norm_mean_ = self._full_coef(self.fitter_._norm_mean.to_numpy(dtype=float))
        base = self.fitter_.baseline_cumulative_hazard_
        self.base_times_ = base.index.to_numpy(dtype=float)
        self.base_cumhaz_ = base.iloc[:, 0].to_numpy(dtype=float)
        self.log_likelihood_ = float(self.fitter_.log_likelihood_)
        self._grid = np.arange(0.0, np.ceil(self.base_times_.max()) + 2.0)

    def _bootstrap(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        df = self._design(X)
        df["T"], df["E"] = self._impute(lo, up)
        fits = Parallel(n_jobs=self.n_jobs)(
            delayed(_cox_refit)(self, df, w) for w in weights
        )
        return {
            "boot_coef": np.vstack([self._full_coef(c) for c, _ in fits]),
            "boot_grid": self._grid.copy(),
            "boot_cumhaz": np.vstack([h for _, h in fits]),
        }

    def _predict_survival(
        self, X: pd.DataFrame, times: np.ndarray, since: np.ndarray | None
    ) -> np.ndarray:
        df = self._design(X)
        with np.errstate(all="ignore"):
            sf = self.fitter_.predict_survival_function(df, times=times, conditional_after=since)
        return sf.to_numpy().T

    def _to_bundle(self) -> Bundle:
        arrays = {
            "coef": self.coef_.copy(),
            "norm_mean": self.norm_mean_.copy(),
            "base_times": self.base_times_.copy(),
            "base_cumhaz": self.base_cumhaz_.copy(),
            **{k: v.copy() for k, v in self.bootstrap_.items()},
        }
        meta = {**self._meta(), "log_likelihood": self.log_likelihood_,
                "interval_imputation": "midpoint"}
        return Bundle(self.kind, "cox", self.time_origin, self._horizons(), self.encoder_,
                      arrays, meta)


def _cox_refit(est: CoxPH, df: pd.DataFrame, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = w > 0
    sub = df[keep].reset_index(drop=True)
    sub["w"] = w[keep]
    fitter, _ = est._fit_cox(sub, weights=True)
    coef = fitter.params_.to_numpy(dtype=float)
    base = fitter.baseline_cumulative_hazard_
    h0 = np.interp(est._grid, base.index.to_numpy(dtype=float), base.iloc[:, 0].to_numpy())
    # Re-express the baseline for z = 0 (lifelines centres on each refit's own mean).
    h0 = h0 * np.exp(-fitter._norm_mean.to_numpy(dtype=float) @ coef)
    return coef, h0


# --------------------------------------------------------------------------- KM
class KaplanMeier(SurvivalEstimator):
    """Population baseline without covariates (``--kind km``): Turnbull NPMLE."""

    kind = "km"

    def _fit_km(self, lo: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from lifelines import KaplanMeierFitter

        fitter, _ = _run_lifelines(
            lambda: KaplanMeierFitter().fit_interval_censoring(lo, up), "Turnbull estimator"
        )
        sf = fitter.survival_function_
        times, surv = sf.index.to_numpy(dtype=float), sf.iloc[:, 0].to_numpy(dtype=float)
        if not (np.all(np.isfinite(surv)) and np.all(np.diff(surv) <= 1e-12)):
            raise ModelFitError("Turnbull estimator gave a non-monotone or non-finite curve")
        return fitter, times, surv

    def _fit(self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray) -> None:
        self.fitter_, self.km_times_, self.km_surv_ = self._fit_km(lo, up)
        self.encoder_ = None
        finite_max = np.max(np.where(np.isfinite(up), up, lo))
        self._grid = np.arange(0.0, np.ceil(finite_max) + 2.0)

    def _bootstrap(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        def one(w: np.ndarray) -> np.ndarray:
            idx = np.repeat(np.arange(len(lo)), w.astype(int))
            _, t, s = self._fit_km(lo[idx], up[idx])
            idx_t = np.searchsorted(t, self._grid, side="right") - 1
            return np.where(idx_t >= 0, s[np.clip(idx_t, 0, None)], 1.0)

        curves = Parallel(n_jobs=self.n_jobs, prefer="threads")(delayed(one)(w) for w in weights)
        return {"boot_grid": self._grid.copy(), "boot_surv": np.vstack(curves)}

    def _predict_survival(
        self, X: pd.DataFrame, times: np.ndarray, since: np.ndarray | None
    ) -> np.ndarray:
        def at(t: np.ndarray) -> np.ndarray:
            # lifelines' predict: value at the last knot <= t (pandas asof).
            # Before the first knot lifelines gives NaN; survival there is 1.
            s = self.fitter_.survival_function_.iloc[:, 0].asof(t).to_numpy(dtype=float)
            return np.where(np.isnan(s), 1.0, s)

        s = np.broadcast_to(at(times), (len(X), times.size)).copy()
        if since is not None:
            s0 = at(np.asarray(since, dtype=float))
            flat = at((since[:, None] + times[None, :]).ravel()).reshape(len(X), times.size)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where(s0[:, None] > 0, flat / s0[:, None], 0.0)
        return s

    def _to_bundle(self) -> Bundle:
        arrays = {"km_times": self.km_times_.copy(), "km_surv": self.km_surv_.copy(),
                  **{k: v.copy() for k, v in self.bootstrap_.items()}}
        return Bundle(self.kind, "km", self.time_origin, self._horizons(), None, arrays,
                      self._meta())


# --------------------------------------------------------------------------- piecewise kind
#: Window edges (days since the last waning-free assessment) of the piecewise kind; the
#: last window is open.
PIECEWISE_EDGES: tuple[float, ...] = (0.0, 7.0, 14.0, 28.0, 42.0, 56.0, 84.0)
#: Penalties of the piecewise kind: on the average effects (``penalizer="auto"``) and on
#: each window's deviation from them. Chosen on fresh simulated cohorts (README).
PIECEWISE_PENALIZER = 0.1
PIECEWISE_WINDOW_PENALIZER = 0.01
#: What the piecewise penalties are per: "unit" (each design column's unit: an SD for the
#: standardised numeric columns, the indicator for a category) or "sd" (column SD).
PIECEWISE_PENALTY_SCALE = "unit"


def _pwe_rows(
    theta: np.ndarray, Z: np.ndarray, exp_lo: np.ndarray, exp_up: np.ndarray,
    event: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of the piecewise likelihood: the window hazards accrued to the
    lower bound (n, J) and between the bounds (n, J), their total between the
    bounds (n,) and ``r = 1 / expm1(total)`` (0 for a right-censored row)."""
    p = Z.shape[1]
    J = exp_lo.shape[1]
    a, beta, delta = theta[:J], theta[J:J + p], theta[J + p:].reshape(J, p)
    lin = Z @ (delta + beta).T  # each window's full effect: one design product, not two
    lin += a
    rate = np.exp(np.minimum(lin, 700.0))
    a_lo = rate * exp_lo
    d = rate * exp_up - a_lo
    gap = np.maximum(d.sum(axis=1), 1e-12)
    r = np.zeros(len(Z))
    r[event] = 1.0 / np.expm1(gap[event])
    return a_lo, d, gap, r


def pwe_objective(
    theta: np.ndarray,
    Z: np.ndarray,
    exp_lo: np.ndarray,
    exp_up: np.ndarray,
    event: np.ndarray,
    w: np.ndarray,
    pen_scale: np.ndarray,
    penalizer: float,
    window_penalizer: float,
) -> tuple[float, np.ndarray]:
    """Penalised mean negative log-likelihood of the piecewise model and its gradient.

    Row i's cumulative hazard to a time with window exposures ``e`` (days in
    each window, :func:`forecast.bundle.window_exposure`) is ``sum_j e_j
    exp(a_j + z_i . (beta + delta_j))``; an interval-censored row contributes
    ``log(S(lower) - S(upper))``, a right-censored one ``log S(lower)``.
    ``theta = [a (J), beta (p), delta (J x p)]``; the penalties are ``0.5 *
    penalizer * sum((beta * sd)^2) + 0.5 * window_penalizer * sum((delta *
    sd)^2)`` with ``sd = pen_scale``: the column SDs (``penalty_scale="sd"``,
    as the AFT kinds) or ones (``"unit"``, the default).
    """
    p = Z.shape[1]
    J = exp_lo.shape[1]
    beta, delta = theta[J:J + p], theta[J + p:].reshape(J, p)
    a_lo, d, gap, r = _pwe_rows(theta, Z, exp_lo, exp_up, event)
    ll = -a_lo.sum(axis=1)
    ll[event] += np.log(-np.expm1(-gap[event]))
    g = d * r[:, None]  # d ll / d lin_ij
    g -= a_lo
    g *= w[:, None]
    sw = w.sum()
    f = -(w @ ll) / sw
    grad = np.empty_like(theta)
    grad[:J] = -g.sum(axis=0) / sw
    grad[J:J + p] = -(Z.T @ g.sum(axis=1)) / sw
    grad[J + p:] = (-(g.T @ Z) / sw).ravel()
    s2 = pen_scale**2
    f += 0.5 * penalizer * float((beta * pen_scale) @ (beta * pen_scale))
    grad[J:J + p] += penalizer * beta * s2
    ds = delta * pen_scale
    f += 0.5 * window_penalizer * float(np.sum(ds * ds))
    grad[J + p:] += (window_penalizer * delta * s2).ravel()
    return float(f), grad


def pwe_hessian(
    theta: np.ndarray,
    Z: np.ndarray,
    exp_lo: np.ndarray,
    exp_up: np.ndarray,
    event: np.ndarray,
    w: np.ndarray,
    pen_scale: np.ndarray,
    penalizer: float,
    window_penalizer: float,
    chunk: int = 32768,
) -> np.ndarray:
    """Exact Hessian of :func:`pwe_objective` in ``theta`` (same arguments).

    Row i's log-likelihood depends on ``theta`` through its window
    predictors ``lin_ij = a_j + z_i . phi_j`` (``phi_j = beta + delta_j``).
    In ``lin`` its Hessian is ``diag(G_i) - r_i (1 + r_i) d_i d_i^T``, with
    ``d_i`` the window hazards accrued between the bounds, ``r_i = 1 /
    expm1(sum d_i)`` (0 for a right-censored row) and ``G_i`` the gradient
    ``r_i d_i - (hazards to the lower bound)``. It is assembled per window
    pair on ``x_i = [1, z_i]``, in row chunks, then mapped from ``(a_j,
    phi_j)`` to ``theta``; the penalties add their diagonal.
    """
    n, p = Z.shape
    J = exp_lo.shape[1]
    q1 = p + 1
    sw = w.sum()
    B = np.zeros((J * q1, J * q1))
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        ws = w[sl] / sw
        x = np.hstack([np.ones((len(ws), 1)), Z[sl]])
        ev = event[sl]
        a_lo, d, _, r = _pwe_rows(theta, Z[sl], exp_lo[sl], exp_up[sl], ev)
        G = d * r[:, None] - a_lo
        for j in range(J):
            bj = slice(j * q1, (j + 1) * q1)
            B[bj, bj] -= (x * (ws * G[:, j])[:, None]).T @ x
        e = np.flatnonzero(ev & (ws > 0))
        if e.size:
            u = np.sqrt(ws[e] * r[e] * (1.0 + r[e]))[:, None] * d[e]
            U = (u[:, :, None] * x[e][:, None, :]).reshape(e.size, J * q1)
            B += U.T @ U
    # (a_j, phi_j) blocks from theta = [a, beta, delta]
    T = np.zeros((J * q1, J + p + J * p))
    eye = np.eye(p)
    for j in range(J):
        T[j * q1, j] = 1.0
        T[j * q1 + 1:(j + 1) * q1, J:J + p] = eye
        T[j * q1 + 1:(j + 1) * q1, J + p + j * p:J + p + (j + 1) * p] = eye
    H = T.T @ B @ T
    s2 = pen_scale**2
    ib = np.arange(J, J + p)
    H[ib, ib] += penalizer * s2
    idl = np.arange(J + p, J + p + J * p)
    H[idl, idl] += window_penalizer * np.tile(s2, J)
    return H


def _pd_cholesky(H: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of ``H``, shifted by a multiple of its mean diagonal if not PD.

    Away from the optimum the interval-censored Hessian can be indefinite;
    the shift makes the Newton step a descent direction (Levenberg).
    """
    scale = float(np.mean(np.diag(H)))
    tau = 0.0
    while True:
        try:
            return cholesky(H + tau * scale * np.eye(len(H)), lower=True)
        except LinAlgError:
            tau = 1e-8 if tau == 0.0 else tau * 10.0
            if tau > 1e8:
                raise ModelFitError("piecewise model: the Hessian is not finite") from None


#: Newton decrement ``g' H^-1 g`` (about twice the objective's distance to its
#: minimum; the objective is a mean log-likelihood per row) at which a fit stops.
PWE_DECREMENT_TOL = 1e-12


def _pwe_newton(theta0: np.ndarray, args: tuple, max_iter: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Damped Newton on :func:`pwe_objective` with its exact Hessian.

    Returns the minimiser and the Cholesky factor of the Hessian there (the
    bootstrap refits' preconditioner). Backtracking (Armijo) line search;
    failure to reach a Newton decrement of ``PWE_DECREMENT_TOL`` within
    ``max_iter`` steps, or a step that cannot decrease the objective, raises
    ModelFitError.
    """
    theta = np.asarray(theta0, dtype=float).copy()
    dec = np.inf
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        f, g = pwe_objective(theta, *args)
        for _ in range(int(max_iter)):
            if not (np.isfinite(f) and np.all(np.isfinite(g))):
                raise ModelFitError("piecewise model: log-likelihood or gradient is not finite")
            L = _pd_cholesky(pwe_hessian(theta, *args))
            step = cho_solve((L, True), g)
            dec = float(g @ step)
            if dec <= PWE_DECREMENT_TOL:
                return theta, L
            s = 1.0
            while True:
                cand = theta - s * step
                f_new, g_new = pwe_objective(cand, *args)
                if np.isfinite(f_new) and f_new <= f - 1e-4 * s * dec:
                    break
                s *= 0.5
                if s < 1e-12:
                    raise ModelFitError("piecewise model: the line search cannot decrease "
                                        f"the objective (Newton decrement {dec:.3g})")
            theta, f, g = cand, f_new, g_new
    raise ModelFitError(f"piecewise model did not converge in {max_iter} Newton steps "
                        f"(Newton decrement {dec:.3g})")


def _pwe_refit(theta0: np.ndarray, chol: np.ndarray, args: tuple, max_iter: int) -> np.ndarray:
    """A bootstrap refit: L-BFGS in coordinates whitened by the full fit's Hessian.

    With ``theta = theta0 + L^-T u`` (``H = L L^T`` at the full fit) the
    resampled objective has a Hessian near the identity in ``u``, so L-BFGS
    needs about ten steps instead of hundreds. Rows of weight 0 are dropped.
    ``|L^-1 g|^2`` is the Newton decrement measured with the full fit's
    Hessian; above ``PWE_DECREMENT_TOL`` the result is finished by
    :func:`_pwe_newton` (the full fit's stopping rule) instead of trusted.
    """
    Z, exp_lo, exp_up, event, w = args[:5]
    keep = w > 0
    args = (Z[keep], exp_lo[keep], exp_up[keep], event[keep], w[keep], *args[5:])

    def whitened(u: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = pwe_objective(theta0 + solve_triangular(chol, u, lower=True, trans="T"), *args)
        return f, solve_triangular(chol, g, lower=True)

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        res = minimize(whitened, np.zeros_like(theta0), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(max_iter), "gtol": 1e-9, "ftol": 1e-15})
    theta = theta0 + solve_triangular(chol, res.x, lower=True, trans="T")
    if np.all(np.isfinite(res.x)) and float(res.jac @ res.jac) <= PWE_DECREMENT_TOL:
        return theta
    return _pwe_newton(theta if np.all(np.isfinite(theta)) else theta0, args, max_iter)[0]


class PiecewiseEntry(SurvivalEstimator):
    """Piecewise-exponential model on the time since the last waning-free assessment.

    ``--kind piecewise``. Trained on the same landmark rows and features as
    the dynamic kind, but on another time scale: each row's clock starts at
    its entry (the last assessment without waning, known survived), so the
    risk within h days of an as-of date ``start`` days into the episode is
    ``1 - S(start - entry + h)`` and nothing is extrapolated from the episode
    start. The hazard is constant within windows of that time
    (``edges``, days; the last window open), each window with its own
    baseline rate and its own covariate effects ``beta + delta_j``: a
    feature may predict waning within the next week more strongly than
    waning two months later. ``penalizer`` (default 0.1) shrinks ``beta``,
    ``window_penalizer`` the deviations ``delta_j``; the fit is an
    interval-censored likelihood, minimised by Newton's method.
    ``penalty_scale`` says per what the coefficients are penalised:
    ``"unit"`` (default) per unit of each design column, i.e. per SD for the
    standardised numeric columns and per indicator for a category, so a
    rare category's effect is shrunk more than under ``"sd"``, per column SD
    (lifelines' convention, the AFT kinds'). On fresh simulated cohorts
    ``"unit"`` ranked better in all 15 fold models compared (AUC(28) +0.004)
    for about 0.003 of ICI (README).

    Why: on fresh 50,000-patient simulated cohorts the dynamic kind's
    calibration slope falls from above 1 at 14 days to about 0.8 at 56 days
    whatever its AFT family or baseline; piecewise-exponential probes showed
    that the time scale, not the family, decides it (``bench/time_scale_check.py``,
    README). The bundle stores the window rates and effects (no rows).
    """

    kind = "piecewise"
    time_origin = "as_of"

    def __init__(
        self,
        features: Any = None,
        penalizer: float | str = "auto",
        n_bootstrap: int = 0,
        random_state: Any = None,
        n_jobs: int = 1,
        max_iter: int = 2000,
        horizons: Sequence[int] | None = None,
        edges: Sequence[float] = PIECEWISE_EDGES,
        window_penalizer: float = PIECEWISE_WINDOW_PENALIZER,
        time_feature: str | None = "elapsed_days",
        time_interactions: str | tuple[str, ...] | None = "dynamic",
        penalty_scale: str = PIECEWISE_PENALTY_SCALE,
    ) -> None:
        super().__init__(features, penalizer, n_bootstrap, random_state, n_jobs, max_iter,
                         horizons)
        self.edges = edges
        self.window_penalizer = window_penalizer
        self.time_feature = time_feature
        self.time_interactions = time_interactions
        self.penalty_scale = penalty_scale

    def fit(self, X: pd.DataFrame, lower: Any, upper: Any, groups: Any = None) -> PiecewiseEntry:
        """Fit on stacked landmark rows; ``groups`` (patient ids) drive the bootstrap."""
        try:
            return super().fit(X, lower, upper, groups)  # type: ignore[return-value]
        finally:
            self.__dict__.pop("_fit_data", None)  # no training rows kept on the estimator
            self.__dict__.pop("_chol", None)

    def _spec(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        return _clock_spec(*super()._spec())

    def _edges(self) -> np.ndarray:
        e = np.asarray(self.edges, dtype=float)
        if e.ndim != 1 or e.size < 1 or e[0] != 0.0 or not np.all(np.isfinite(e)) \
                or np.any(np.diff(e) <= 0):
            raise ValueError("edges must be finite, increasing days starting at 0, "
                             f"got {list(self.edges)!r}")
        return e

    def _rows(self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(window exposures to lower, to upper, event) on the time since the entry."""
        lo_ep, up_ep, entry, _ = _episode_bounds(X, lo, up)
        event = np.isfinite(up_ep)
        e = self._edges()
        exp_lo = window_exposure(lo_ep - entry, e)
        exp_up = window_exposure(np.where(event, up_ep - entry, 0.0), e)
        return exp_lo, exp_up, event

    def _fit(self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray) -> None:
        if self.penalizer == "auto":
            self.penalizer_ = PIECEWISE_PENALIZER
        if not float(self.window_penalizer) >= 0:
            raise ValueError("window_penalizer must be a number >= 0")
        numeric, categorical = self._spec()
        inter = LandmarkAFT._interactions(self, X, numeric)  # type: ignore[arg-type]
        self.encoder_ = Encoder.fit(X, numeric, categorical,
                                    time_feature=self.time_feature if inter else None,
                                    time_interactions=inter)
        active = self.encoder_.active
        Z = np.ascontiguousarray(self.encoder_.transform(X)[:, active])
        exp_lo, exp_up, event = self._rows(X, lo, up)
        J, p = exp_lo.shape[1], Z.shape[1]
        if self.penalty_scale not in ("unit", "sd"):
            raise ValueError(f"penalty_scale must be 'unit' or 'sd', got {self.penalty_scale!r}")
        scale = _pen_scale(Z) if self.penalty_scale == "sd" else np.ones(Z.shape[1])
        self._fit_data = (Z, exp_lo, exp_up, event, scale)
        theta0 = np.zeros(J + p + J * p)
        exposure = np.where(event[:, None], 0.5 * (exp_lo + exp_up), exp_lo).sum(axis=0)
        theta0[:J] = np.log(max(event.sum(), 1) / max(exposure.sum(), 1.0))
        theta, self._chol = _pwe_newton(theta0, self._args(np.ones(len(Z))), self.max_iter)
        if p and np.all(np.abs(theta[J:]) < 1e-10):
            raise ModelFitError("piecewise model: all coefficients are exactly zero "
                                "(silent failed fit)")
        with np.errstate(over="ignore", divide="ignore"):
            f_raw, _ = pwe_objective(theta, Z, exp_lo, exp_up, event, np.ones(len(Z)),
                                     self._fit_data[4], 0.0, 0.0)
        self.log_likelihood_ = -f_raw * len(Z)
        self.theta_ = theta
        self.family_ = "piecewise"
        self.log_base_, self.coef_, self.window_coef_ = self._unpack(theta)

    def _args(self, w: np.ndarray) -> tuple:
        Z, exp_lo, exp_up, event, sd = self._fit_data
        return (Z, exp_lo, exp_up, event, w, sd, self._penalty(), float(self.window_penalizer))

    def _unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log_base (J), average effect (full p), deviations (J, full p)) of ``theta``."""
        active = self.encoder_.active
        J = self._edges().size
        p = int(active.sum())
        beta, delta = theta[J:J + p], theta[J + p:].reshape(J, p)
        mean_delta = delta.mean(axis=0)
        coef = np.zeros(active.size)
        coef[active] = beta + mean_delta
        wcoef = np.zeros((J, active.size))
        wcoef[:, active] = delta - mean_delta
        return theta[:J].copy(), coef, wcoef

    def _bootstrap(
        self, X: pd.DataFrame, lo: np.ndarray, up: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        thetas = Parallel(n_jobs=self.n_jobs)(
            delayed(_pwe_refit)(self.theta_, self._chol, self._args(w), self.max_iter)
            for w in weights
        )
        parts = [self._unpack(t) for t in thetas]
        return {
            "boot_log_base": np.stack([q[0] for q in parts]),
            "boot_coef": np.stack([q[1] for q in parts]),
            "boot_window_coef": np.stack([q[2] for q in parts]),
        }

    def lifelines_fitter(self) -> Any:
        """lifelines' ``PiecewiseExponentialRegressionFitter`` carrying this model's parameters.

        lifelines' hazard in window j is ``exp(-x . b_j)`` on ``x = [z, 1]``,
        so ``b_j = -(coef + window_coef_j)`` and its intercept ``-log_base_j``.
        Predictions go through :meth:`lifelines_input`; the reference the
        bundle is tested against (lifelines' own code, none of ours).
        """
        from lifelines import PiecewiseExponentialRegressionFitter

        check_is_fitted(self)
        active = self.encoder_.active
        cols = [*(f"z{i}" for i in range(int(active.sum()))), "Intercept"]
        names = [f"lambda_{j}_" for j in range(self.log_base_.size)]
        values = [-np.append(self.coef_[active] + self.window_coef_[j, active], self.log_base_[j])
                  for j in range(len(names))]
        fitter = PiecewiseExponentialRegressionFitter(breakpoints=list(self._edges()[1:]))
        fitter.params_ = pd.Series(np.concatenate(values),
                                   index=pd.MultiIndex.from_product([names, cols]))
        fitter.timeline = self._edges()  # read by predict even when times are given
        return fitter

    def lifelines_input(self, X: pd.DataFrame) -> np.ndarray:
        """The design lifelines' predict methods need for ``X`` (active columns, then 1)."""
        z = self.encoder_.transform(X)[:, self.encoder_.active]
        return np.hstack([z, np.ones((len(z), 1))])

    def _predict_survival(
        self, X: pd.DataFrame, times: np.ndarray, since: np.ndarray | None
    ) -> np.ndarray:
        """``S(start - entry + since + t) / S(cond - entry)`` by lifelines' predict.

        lifelines takes one vector of times for all rows: it is called once on
        the union of the times the rows need, and each row's values gathered.
        """
        start, entry = clock_arrays(X)
        s = np.zeros(len(X)) if since is None else since
        base = start + s
        cond = np.where(s > 0, base, entry)
        need = (base - entry)[:, None] + times[None, :]
        grid, inv = np.unique(np.concatenate([need.ravel(), cond - entry]), return_inverse=True)
        sf = self.lifelines_fitter().predict_survival_function(
            self.lifelines_input(X), times=grid).to_numpy()  # (grid, rows)
        rows = np.arange(len(X))
        s_need = sf[inv[:need.size].reshape(need.shape), rows[:, None]]
        return np.minimum(s_need / sf[inv[need.size:], rows][:, None], 1.0)

    def _to_bundle(self) -> Bundle:
        arrays = {
            "coef": self.coef_.copy(),
            "window_coef": self.window_coef_.copy(),
            "log_base": self.log_base_.copy(),
            "edges": self._edges(),
            **{k: v.copy() for k, v in self.bootstrap_.items()},
        }
        meta = {**self._meta(), "log_likelihood": self.log_likelihood_,
                "window_penalizer": float(self.window_penalizer),
                "penalty_scale": str(self.penalty_scale),
                "edges": [float(x) for x in self._edges()], "clock": dict(CLOCK_FEATURES)}
        return Bundle(self.kind, "piecewise", self.time_origin, self._horizons(),
                      self.encoder_, arrays, meta)


ESTIMATORS: dict[str, type[SurvivalEstimator]] = {
    "km": KaplanMeier,
    "cox": CoxPH,
    "weibull": WeibullAFT,
    "lognormal": LogNormalAFT,
    "loglogistic": LogLogisticAFT,
    "landmark": LandmarkAFT,
    "dynamic": DynamicAFT,
    "piecewise": PiecewiseEntry,
}
assert tuple(ESTIMATORS) == KINDS


def make_estimator(kind: str, **params: Any) -> SurvivalEstimator:
    """Build the estimator of ``kind`` (see module notes) with ``params``."""
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[kind](**params)


def __getattr__(name: str) -> Any:
    """The ``Seeded*`` lifelines fitters are made on first use (lifelines loads lazily);
    this resolves them for pickle in a process that has not fitted yet."""
    if name.startswith("Seeded"):
        fitters = {cls.__name__: cls for cls in _seeded_fitters().values()}
        if name in fitters:
            return fitters[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
