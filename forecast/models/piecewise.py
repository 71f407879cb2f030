"""The ``piecewise`` kind (the default): a piecewise-exponential hazard on the time since
the last waning-free assessment, with covariate effects that may differ by window.

Fitted by Newton's method with the exact Hessian of the penalised Poisson
likelihood (:func:`pwe_objective`, :func:`pwe_hessian`); see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.linalg import LinAlgError, cho_solve, cholesky, solve_triangular
from scipy.optimize import minimize
from sklearn.utils.validation import check_is_fitted

from forecast.absent import mask_optional_inputs
from forecast.bundle import CLOCK_FEATURES, Bundle, Encoder, clock_arrays, window_exposure
from forecast.models.base import (
    ModelFitError,
    SurvivalEstimator,
    _clock_spec,
    _episode_bounds,
    _pen_scale,
)
from forecast.models.landmark import LandmarkAFT

#: Window edges (days since the last waning-free assessment) of the piecewise kind; the
#: last window is open.
PIECEWISE_EDGES: tuple[float, ...] = (0.0, 7.0, 14.0, 28.0, 42.0, 56.0, 84.0)
#: Penalties of the piecewise kind: on the average effects (``penalizer="auto"``) and on
#: each window's deviation from them. Chosen on fresh simulated cohorts (see
#: docs/design-decisions.md, "Piecewise penalties per unit, window penalty 0.01").
PIECEWISE_PENALIZER = 0.1
PIECEWISE_WINDOW_PENALIZER = 0.01
#: Penalty on the difference between neighbouring windows' effects (docs/design-decisions.md,
#: "Window effects smooth across windows").
PIECEWISE_WINDOW_SMOOTHING = 0.1
#: What the piecewise penalties are per: "unit" (each design column's unit: an SD for the
#: standardised numeric columns, the indicator for a category) or "sd" (column SD).
PIECEWISE_PENALTY_SCALE = "unit"
#: Shares of the training rows in which the optional inputs are hidden at random
#: (forecast.absent): all at once (a totals-only export), and each on its own
#: otherwise. What an absent input costs is information, not calibration.
PIECEWISE_ABSENT_JOINT_SHARE = 0.2
PIECEWISE_ABSENT_SHARE = 0.1


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


def pwe_data_sums(
    theta: np.ndarray,
    Z: np.ndarray,
    exp_lo: np.ndarray,
    exp_up: np.ndarray,
    event: np.ndarray,
    w: np.ndarray,
) -> tuple[float, np.ndarray]:
    """The data term: weighted SUMS over rows of the negative log-likelihood and its gradient.

    Row i's cumulative hazard to a time with window exposures ``e`` (days in
    each window, :func:`forecast.bundle.window_exposure`) is ``sum_j e_j
    exp(a_j + z_i . (beta + delta_j))``; an interval-censored row contributes
    ``log(S(lower) - S(upper))``, a right-censored one ``log S(lower)``.
    Sums, not means: the rows may be split into parts (forecast.distributed),
    each part's sums added, and only then divided by the total weight.
    """
    p = Z.shape[1]
    J = exp_lo.shape[1]
    a_lo, d, gap, r = _pwe_rows(theta, Z, exp_lo, exp_up, event)
    ll = -a_lo.sum(axis=1)
    ll[event] += np.log(-np.expm1(-gap[event]))
    g = d * r[:, None]  # d ll / d lin_ij
    g -= a_lo
    g *= w[:, None]
    grad = np.empty_like(theta)
    grad[:J] = -g.sum(axis=0)
    grad[J:J + p] = -(Z.T @ g.sum(axis=1))
    grad[J + p:] = (-(g.T @ Z)).ravel()
    return -float(w @ ll), grad


def pwe_hessian_sums(
    theta: np.ndarray,
    Z: np.ndarray,
    exp_lo: np.ndarray,
    exp_up: np.ndarray,
    event: np.ndarray,
    w: np.ndarray,
    chunk: int = 32768,
) -> np.ndarray:
    """The data term's exact Hessian in ``theta``: a weighted SUM over rows.

    Row i's log-likelihood depends on ``theta`` through its window
    predictors ``lin_ij = a_j + z_i . phi_j`` (``phi_j = beta + delta_j``).
    In ``lin`` its Hessian is ``diag(G_i) - r_i (1 + r_i) d_i d_i^T``, with
    ``d_i`` the window hazards accrued between the bounds, ``r_i = 1 /
    expm1(sum d_i)`` (0 for a right-censored row) and ``G_i`` the gradient
    ``r_i d_i - (hazards to the lower bound)``. It is assembled per window
    pair on ``x_i = [1, z_i]``, in row chunks, then mapped from ``(a_j,
    phi_j)`` to ``theta``.
    """
    n, p = Z.shape
    J = exp_lo.shape[1]
    q1 = p + 1
    B = np.zeros((J * q1, J * q1))
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        ws = w[sl]
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
    return T.T @ B @ T


def pwe_penalty(
    theta: np.ndarray, J: int, pen_scale: np.ndarray, penalizer: float, window_penalizer: float,
    window_smoothing: float = 0.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The penalty term: its value, gradient and Hessian (parameter-sized, no rows).

    ``theta = [a (J), beta (p), delta (J x p)]``; the penalties are ``0.5 *
    penalizer * sum((beta * sd)^2) + 0.5 * window_penalizer * sum((delta *
    sd)^2)`` with ``sd = pen_scale``: the column SDs (``penalty_scale="sd"``,
    as the AFT kinds) or ones (``"unit"``, the default). The one place the
    penalties are defined: the single-machine and the distributed fits both
    add it to the data term (:func:`pwe_combine`).
    """
    p = pen_scale.size
    beta, delta = theta[J:J + p], theta[J + p:].reshape(J, p)
    s2 = pen_scale**2
    bs = beta * pen_scale
    ds = delta * pen_scale
    f = 0.5 * penalizer * float(bs @ bs) + 0.5 * window_penalizer * float(np.sum(ds * ds))
    grad = np.zeros_like(theta)
    grad[J:J + p] = penalizer * beta * s2
    grad[J + p:] = (window_penalizer * delta * s2).ravel()
    diag = np.zeros(theta.size)
    diag[J:J + p] = penalizer * s2
    diag[J + p:] = window_penalizer * np.tile(s2, J)
    H = np.diag(diag)
    if window_smoothing > 0 and J > 1:
        # neighbouring windows' effects close: 0.5 * ws * sum((delta[j+1] - delta[j])^2 sd^2)
        DtD = np.diff(np.eye(J), axis=0).T @ np.diff(np.eye(J), axis=0)  # (J, J) tridiagonal
        f += 0.5 * window_smoothing * float(np.sum((np.diff(delta, axis=0) * pen_scale) ** 2))
        grad[J + p:] += (window_smoothing * (DtD @ delta) * s2).ravel()
        H[J + p:, J + p:] += window_smoothing * np.kron(DtD, np.diag(s2))
    return f, grad, H


@dataclass(frozen=True)
class PwePenalty:
    """The penalty settings of a fit (see :func:`pwe_penalty`)."""

    J: int
    pen_scale: np.ndarray
    penalizer: float
    window_penalizer: float
    window_smoothing: float = 0.0

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return pwe_penalty(theta, self.J, self.pen_scale, self.penalizer, self.window_penalizer,
                           self.window_smoothing)


def pwe_combine(
    total_weight: float, nll_sum: float, grad_sum: np.ndarray, theta: np.ndarray,
    penalty: PwePenalty,
) -> tuple[float, np.ndarray]:
    """Penalised mean objective from the data term's sums (all rows, all parts)."""
    f_pen, g_pen, _ = penalty(theta)
    return nll_sum / total_weight + f_pen, grad_sum / total_weight + g_pen


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

    The data term (:func:`pwe_data_sums`) divided by the total weight, plus
    the penalty term (:func:`pwe_penalty`).
    """
    penalty = PwePenalty(exp_lo.shape[1], pen_scale, penalizer, window_penalizer)
    nll, grad = pwe_data_sums(theta, Z, exp_lo, exp_up, event, w)
    f, g = pwe_combine(float(w.sum()), nll, grad, theta, penalty)
    return float(f), g


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
    """Exact Hessian of :func:`pwe_objective` in ``theta`` (same arguments):
    :func:`pwe_hessian_sums` over the total weight plus the penalty's."""
    penalty = PwePenalty(exp_lo.shape[1], pen_scale, penalizer, window_penalizer)
    H = pwe_hessian_sums(theta, Z, exp_lo, exp_up, event, w, chunk) / float(w.sum())
    return H + penalty(theta)[2]


class PweObjective(Protocol):
    """What the Newton and refit loops need: the penalised objective, its gradient, Hessian.

    :class:`LocalPwe` holds the rows in memory; ``forecast.distributed`` sums
    the data term over parts held by Dask workers.
    """

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]: ...

    def hessian(self, theta: np.ndarray) -> np.ndarray: ...

    def reweighted(self, w: np.ndarray) -> PweObjective: ...

    def log_likelihood(self, theta: np.ndarray) -> float: ...


@dataclass(frozen=True)
class LocalPwe:
    """The penalised objective on rows held in memory (one machine)."""

    Z: np.ndarray
    exp_lo: np.ndarray
    exp_up: np.ndarray
    event: np.ndarray
    w: np.ndarray
    penalty: PwePenalty

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        nll, grad = pwe_data_sums(theta, self.Z, self.exp_lo, self.exp_up, self.event, self.w)
        f, g = pwe_combine(float(self.w.sum()), nll, grad, theta, self.penalty)
        return float(f), g

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        H = pwe_hessian_sums(theta, self.Z, self.exp_lo, self.exp_up, self.event, self.w)
        return H / float(self.w.sum()) + self.penalty(theta)[2]

    def log_likelihood(self, theta: np.ndarray) -> float:
        """The unpenalised weighted log-likelihood (a sum over rows)."""
        return -pwe_data_sums(theta, self.Z, self.exp_lo, self.exp_up, self.event, self.w)[0]

    def reweighted(self, w: np.ndarray) -> LocalPwe:
        """The objective with row weights ``w`` (a bootstrap); rows of weight 0 dropped."""
        keep = w > 0
        return LocalPwe(self.Z[keep], self.exp_lo[keep], self.exp_up[keep], self.event[keep],
                        w[keep], self.penalty)


def pwe_start(n_events: float, exposure: float, J: int, p: int) -> np.ndarray:
    """The Newton start: one common window rate (events / exposure), no effects."""
    theta0 = np.zeros(J + p + J * p)
    theta0[:J] = np.log(max(n_events, 1) / max(exposure, 1.0))
    return theta0


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


def _pwe_newton(theta0: np.ndarray, objective: PweObjective, max_iter: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Damped Newton on the penalised objective (:class:`PweObjective`) with its exact Hessian.

    Returns the minimiser and the Cholesky factor of the Hessian there (the
    bootstrap refits' preconditioner). Backtracking (Armijo) line search;
    failure to reach a Newton decrement of ``PWE_DECREMENT_TOL`` within
    ``max_iter`` steps, or a step that cannot decrease the objective, raises
    ModelFitError.
    """
    theta = np.asarray(theta0, dtype=float).copy()
    dec = np.inf
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        f, g = objective.value_grad(theta)
        for _ in range(int(max_iter)):
            if not (np.isfinite(f) and np.all(np.isfinite(g))):
                raise ModelFitError("piecewise model: log-likelihood or gradient is not finite")
            L = _pd_cholesky(objective.hessian(theta))
            step = cho_solve((L, True), g)
            dec = float(g @ step)
            if dec <= PWE_DECREMENT_TOL:
                return theta, L
            s = 1.0
            while True:
                cand = theta - s * step
                f_new, g_new = objective.value_grad(cand)
                if np.isfinite(f_new) and f_new <= f - 1e-4 * s * dec:
                    break
                s *= 0.5
                if s < 1e-12:
                    raise ModelFitError("piecewise model: the line search cannot decrease "
                                        f"the objective (Newton decrement {dec:.3g})")
            theta, f, g = cand, f_new, g_new
    raise ModelFitError(f"piecewise model did not converge in {max_iter} Newton steps "
                        f"(Newton decrement {dec:.3g})")


def _pwe_refit(theta0: np.ndarray, chol: np.ndarray, objective: PweObjective,
               max_iter: int) -> np.ndarray:
    """A bootstrap refit: L-BFGS in coordinates whitened by the full fit's Hessian.

    ``objective`` is the resampled one (:meth:`PweObjective.reweighted`). With
    ``theta = theta0 + L^-T u`` (``H = L L^T`` at the full fit) the resampled
    objective has a Hessian near the identity in ``u``, so L-BFGS needs about
    ten steps instead of hundreds. ``|L^-1 g|^2`` is the Newton decrement
    measured with the full fit's Hessian; above ``PWE_DECREMENT_TOL`` the
    result is finished by :func:`_pwe_newton` (the full fit's stopping rule)
    instead of trusted.
    """
    def whitened(u: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = objective.value_grad(theta0 + solve_triangular(chol, u, lower=True, trans="T"))
        return f, solve_triangular(chol, g, lower=True)

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        res = minimize(whitened, np.zeros_like(theta0), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(max_iter), "gtol": 1e-9, "ftol": 1e-15})
    theta = theta0 + solve_triangular(chol, res.x, lower=True, trans="T")
    if np.all(np.isfinite(res.x)) and float(res.jac @ res.jac) <= PWE_DECREMENT_TOL:
        return _pwe_polish(theta, objective)
    return _pwe_newton(theta if np.all(np.isfinite(theta)) else theta0, objective, max_iter)[0]


def _pwe_polish(theta: np.ndarray, objective: PweObjective) -> np.ndarray:
    """One exact Newton step from an L-BFGS refit (``theta`` within ``PWE_DECREMENT_TOL``).

    Why: L-BFGS stops anywhere within its tolerance, and where depends on
    rounding (the order in which rows are summed); a refit summed over parts
    (forecast.distributed) would then differ from the one-machine refit by
    ~1e-7. From within a decrement of 1e-12 one Newton step lands within
    ~1e-12 of the minimiser itself, where both agree. A step that is not
    small, or not finite, is not taken.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        _, g = objective.value_grad(theta)
        try:
            step = cho_solve((_pd_cholesky(objective.hessian(theta)), True), g)
        except ModelFitError:
            return theta
    if not np.all(np.isfinite(step)) or float(g @ step) > 1e3 * PWE_DECREMENT_TOL:
        return theta
    return theta - step


class PiecewiseExponentialModel(SurvivalEstimator):
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
    for about 0.003 of ICI (see docs/design-decisions.md).

    Why: on fresh 50,000-patient simulated cohorts the dynamic kind's
    calibration slope falls from above 1 at 14 days to about 0.8 at 56 days
    whatever its AFT family or baseline; piecewise-exponential probes showed
    that the time scale, not the family, decides it (``research/time_scale_check.py``;
    see docs/models.md). The bundle stores the window rates and effects (no rows).
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
        absent_share: float = PIECEWISE_ABSENT_SHARE,
        absent_joint_share: float = PIECEWISE_ABSENT_JOINT_SHARE,
        window_smoothing: float = PIECEWISE_WINDOW_SMOOTHING,
    ) -> None:
        super().__init__(features, penalizer, n_bootstrap, random_state, n_jobs, max_iter,
                         horizons)
        self.absent_share = absent_share
        self.absent_joint_share = absent_joint_share
        self.edges = edges
        self.window_penalizer = window_penalizer
        self.time_feature = time_feature
        self.time_interactions = time_interactions
        self.penalty_scale = penalty_scale
        self.window_smoothing = window_smoothing

    def fit(self, X: pd.DataFrame, lower: Any, upper: Any,
            groups: Any = None) -> PiecewiseExponentialModel:
        """Fit on stacked landmark rows; ``groups`` (patient ids) drive the bootstrap.

        The optional inputs (dose, route, psychotherapy, dissociation, item 9,
        C-SSRS) are first hidden at random: all at once in
        ``absent_joint_share`` of the rows, each on its own in ``absent_share``
        of the others (:func:`forecast.absent.mask_optional_inputs`), so that a
        history without them is forecast with their average effect.
        """
        seed = self.random_state if isinstance(self.random_state, int | np.integer) else 0
        if isinstance(X, pd.DataFrame):
            X = mask_optional_inputs(
                X, float(self.absent_share), int(seed), float(self.absent_joint_share)
            )
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
        self._check_penalties()
        numeric, categorical = self._spec()
        inter = LandmarkAFT._interactions(self, X, numeric)  # type: ignore[arg-type]
        self.encoder_ = Encoder.fit(X, numeric, categorical,
                                    time_feature=self.time_feature if inter else None,
                                    time_interactions=inter)
        Z = np.ascontiguousarray(self.encoder_.transform(X)[:, self.encoder_.active])
        exp_lo, exp_up, event = self._rows(X, lo, up)
        scale = _pen_scale(Z) if self.penalty_scale == "sd" else np.ones(Z.shape[1])
        self._fit_data = LocalPwe(Z, exp_lo, exp_up, event, np.ones(len(Z)),
                                  self._pwe_penalty(scale))
        exposure = np.where(event[:, None], 0.5 * (exp_lo + exp_up), exp_lo).sum(axis=0)
        theta0 = pwe_start(float(event.sum()), float(exposure.sum()), exp_lo.shape[1], Z.shape[1])
        self._fit_objective(self._fit_data, theta0)

    def _check_penalties(self) -> None:
        """Resolve ``penalizer="auto"`` and check the other penalty settings."""
        if self.penalizer == "auto":
            self.penalizer_ = PIECEWISE_PENALIZER
        if not float(self.window_penalizer) >= 0:
            raise ValueError("window_penalizer must be a number >= 0")
        if not float(self.window_smoothing) >= 0:
            raise ValueError("window_smoothing must be a number >= 0")
        if self.penalty_scale not in ("unit", "sd"):
            raise ValueError(f"penalty_scale must be 'unit' or 'sd', got {self.penalty_scale!r}")

    def _pwe_penalty(self, scale: np.ndarray) -> PwePenalty:
        return PwePenalty(self._edges().size, scale, self._penalty(),
                          float(self.window_penalizer), float(self.window_smoothing))

    def _fit_objective(self, objective: PweObjective, theta0: np.ndarray) -> None:
        """Newton from ``theta0`` on ``objective`` (in memory or distributed); sets the fit.

        The encoder (``encoder_``) is set before; the distributed fit
        (``forecast.distributed``) calls this with an objective summed over parts.
        """
        theta, self._chol = _pwe_newton(theta0, objective, self.max_iter)
        J = self._edges().size
        if theta.size > J and np.all(np.abs(theta[J:]) < 1e-10):
            raise ModelFitError("piecewise model: all coefficients are exactly zero "
                                "(silent failed fit)")
        with np.errstate(over="ignore", divide="ignore"):
            self.log_likelihood_ = objective.log_likelihood(theta)
        self.theta_ = theta
        self.family_ = "piecewise"
        self.log_base_, self.coef_, self.window_coef_ = self._unpack(theta)

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
            delayed(_pwe_refit)(self.theta_, self._chol, self._fit_data.reweighted(w),
                                self.max_iter)
            for w in weights
        )
        return self._bootstrap_arrays(thetas)

    def _bootstrap_arrays(self, thetas: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The bundle's bootstrap arrays from the refits' ``theta``."""
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
        from lifelines import PiecewiseExponentialRegressionFitter  # local: heavy

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
                "window_smoothing": float(self.window_smoothing),
                "penalty_scale": str(self.penalty_scale),
                "edges": [float(x) for x in self._edges()], "clock": dict(CLOCK_FEATURES)}
        return Bundle(self.kind, "piecewise", self.time_origin, self._horizons(),
                      self.encoder_, arrays, meta)
