"""Static parametric AFT kinds (``weibull``, ``lognormal``, ``loglogistic``).

The penalised interval-censored AFT objective with its analytic gradient
(:func:`aft_objective`), the seeded lifelines fitters used to check and refine
its optimum, and :class:`AFTEstimator` with its three families.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.optimize import minimize
from scipy.special import expit, log_ndtr, ndtr
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from forecast.bundle import Bundle, Encoder
from forecast.models.base import (
    ModelFitError,
    SurvivalEstimator,
    _check_estimates,
    _log_entry,
    _pen_scale,
    _run_lifelines,
)

#: Names of the lifelines parameters: (location, ancillary) per AFT family.
_AFT_PARAMS: dict[str, tuple[str, str]] = {
    "weibull": ("lambda_", "rho_"),
    "lognormal": ("mu_", "sigma_"),
    "loglogistic": ("alpha_", "beta_"),
}


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


def _interval_terms(
    family: str, sign: float, c: np.ndarray, u_l: np.ndarray, u_u: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row log-likelihood and its derivatives in eta and g, without left truncation."""
    s_l, ds_l = _std_surv(family, u_l)
    s_u, ds_u = _std_surv(family, u_u)
    d = np.clip(s_l - s_u, 1e-25, 1 - 1e-25)
    ll = np.log(d)
    with np.errstate(invalid="ignore"):  # inf * 0 at right-censored rows, masked out
        uds_u = np.where(np.isfinite(u_u), u_u * ds_u, 0.0)
    d_eta = -c * (ds_l - ds_u) / d
    d_g = sign * (u_l * ds_l - uds_u) / d
    return ll, d_eta, d_g


def _truncated_interval_terms(
    family: str, sign: float, c: np.ndarray, eta: np.ndarray, u_l: np.ndarray,
    u_u: np.ndarray, log_entry: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row log-likelihood and its derivatives in eta and g, left-truncated at entry."""
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
    return ll, d_eta, d_g


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
        ll, d_eta, d_g = _interval_terms(family, sign, c, u_l, u_u)
    else:
        ll, d_eta, d_g = _truncated_interval_terms(family, sign, c, eta, u_l, u_u, log_entry)
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


# --------------------------------------------------------------------------- lifelines fitters
def _lifelines_fitters() -> dict[str, Any]:
    from lifelines import LogLogisticAFTFitter, LogNormalAFTFitter, WeibullAFTFitter  # local: heavy

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


def __getattr__(name: str) -> Any:
    """The ``Seeded*`` lifelines fitters are made on first use (lifelines loads lazily);
    this resolves them for pickle in a process that has not fitted yet."""
    if name.startswith("Seeded"):
        fitters = {cls.__name__: cls for cls in _seeded_fitters().values()}
        if name in fitters:
            return fitters[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
