"""The landmark-row AFT kinds: ``landmark`` (residual time) and ``dynamic`` (episode clock)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from forecast.bundle import AFT_FAMILIES, CLOCK_FEATURES, Bundle, aft_log_survival, clock_arrays
from forecast.models.aft import AFTEstimator
from forecast.models.base import (
    DEFAULT_PENALIZER,
    PENALIZER_GRID,
    ModelFitError,
    _clock_spec,
    _episode_bounds,
    _groups_codes,
    _log_entry,
)


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
    """Residual-time landmark model (``--kind landmark``).

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


class DynamicAFT(LandmarkAFT):
    """Dynamic model on the episode's time scale (``--kind dynamic``).

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

    Why: the residual-time landmark model over-predicts the 28-day risk on a
    cohort of an independent generator by 0.05-0.08 against its latent truth,
    most at 14-70 days after the session; on the same cohorts this
    formulation is within 0.02 (see docs/models.md and docs/evaluation.md,
    "Checked on a cohort from another generator").

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
