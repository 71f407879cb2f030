"""From a cohort to a fitted estimator: the training data of each kind.

- ``landmark`` (dynamic) trains on the stacked super-landmark dataset
  (``forecast.features.landmark_dataset``) with every feature.
- The static kinds (``cox``, ``weibull``, ``lognormal``, ``loglogistic``,
  ``km``) train on the landmark-0 rows (one per episode, features at the
  episode's start, outcome from the start) and use only the *static*
  features: those that never change within an episode across its landmark
  rows. A static model is served at a later as-of date with the features of
  that date and ``since`` = days since the episode start, so a feature that
  moves within the episode would be read at a time the model never saw. The
  static set is found from the data (works for any generator), not from a
  list of names.

Nothing here assumes the project's simulator: any cohort that follows the data
contract works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from forecast import registry, signing
from forecast.bundle import window_exposure
from forecast.episodes import build_episodes
from forecast.features import feature_spec, features_at, landmark_dataset
from forecast.models import DEFAULT_KIND, FeatureSet, SurvivalEstimator, make_estimator
from forecast.models.piecewise import pwe_data_sums
from forecast.outcomes import OutcomeDefinition

STATIC_KINDS: tuple[str, ...] = ("km", "cox", "weibull", "lognormal", "loglogistic")


@dataclass
class TrainingData:
    """Rows, outcomes and features a kind is fitted on."""

    X: pd.DataFrame
    lower: np.ndarray
    upper: np.ndarray
    groups: np.ndarray
    features: FeatureSet
    summary: dict[str, Any] = field(default_factory=dict)


def spec_of(cohort: Any) -> FeatureSet:
    """The feature specification of ``cohort`` (with its declared covariates)."""
    spec = feature_spec(tuple(getattr(cohort, "covariates", ()) or ()))
    return FeatureSet(tuple(spec.numeric), {k: tuple(v) for k, v in spec.categorical.items()})


def static_features(landmarks: pd.DataFrame, spec: FeatureSet) -> FeatureSet:
    """The features of ``spec`` that are constant within every episode of ``landmarks``."""
    if len(landmarks) == 0:
        return spec
    codes = pd.factorize(landmarks["episode_id"])[0]
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    numeric = []
    for name in spec.numeric:
        v = pd.to_numeric(landmarks[name], errors="coerce").to_numpy(dtype=float)[order]
        v = np.where(np.isnan(v), -np.inf, v)  # NaN == NaN for this purpose
        if np.array_equal(np.maximum.reduceat(v, starts), np.minimum.reduceat(v, starts)):
            numeric.append(name)
    categorical = {}
    for name, levels in spec.categorical.items():
        codes_v = pd.factorize(landmarks[name].astype(object).where(landmarks[name].notna(),
                                                                     "\0none"))[0][order]
        if np.array_equal(np.maximum.reduceat(codes_v, starts),
                          np.minimum.reduceat(codes_v, starts)):
            categorical[name] = levels
    return FeatureSet(tuple(numeric), categorical)


def forecast_point_dataset(cohort: Any, definition: Any = None) -> pd.DataFrame:
    """One row per episode at its FIRST FORECAST POINT: the response assessment.

    The service forecasts for a patient once the episode is known, i.e. from
    the first PHQ-9 after the session that shows the response. This returns,
    for every episode still event-free-observed after that date, the features
    of :func:`forecast.features.features_at` at ``as_of = response_date``
    (history up to that date only; for an episode whose response was read
    before its session, the session day) and the residual outcome in the layout of
    :func:`forecast.features.landmark_dataset`: ``landmark`` = the response
    day ``s`` (days after the episode start), ``lower = max(lower - s, 0)``,
    ``upper = upper - s``. An episode right-censored at its response
    assessment carries no information after it and has no row.
    """
    ep = build_episodes(cohort, definition)
    # A response read at check-in before the session (pre-session rule) is known on
    # the session day: the first forecast point is then the session day itself.
    s = np.maximum(ep["response_day"].to_numpy(dtype=float), 0.0)
    lo = ep["lower"].to_numpy(dtype=float)
    up = ep["upper"].to_numpy(dtype=float)
    ev = ep["event"].to_numpy(dtype=bool)
    keep = np.isfinite(s) & (s < np.where(ev, up, lo))
    ep, s, lo, up, ev = ep[keep], s[keep], lo[keep], up[keep], ev[keep]
    as_of = np.maximum(pd.to_datetime(ep["response_date"]).to_numpy(),
                       pd.to_datetime(ep["start"]).to_numpy())
    q = pd.DataFrame({"patient_id": ep["patient_id"].to_numpy(dtype=object), "as_of": as_of})
    frame = features_at(cohort, q, definition)
    # A second session on the response day would start another episode: keep own rows only.
    own = frame["episode_id"].astype(object).to_numpy() == ep["episode_id"].to_numpy(dtype=object)
    frame = frame.loc[own].reset_index(drop=True)
    s, lo, up, ev = s[own], lo[own], up[own], ev[own]
    frame["episode_id"] = ep["episode_id"].to_numpy(dtype=object)[own]
    frame["episode_start"] = ep["start"].to_numpy()[own]
    frame["landmark"] = s.astype(np.int64)
    frame["lower"] = np.maximum(lo - s, 0.0)
    frame["upper"] = up - s
    frame["event"] = ev
    first = ["patient_id", "episode_id", "landmark", "as_of", "lower", "upper", "event"]
    return frame[first + [c for c in frame.columns if c not in first]]


def training_landmarks(cohort: Any, definition: Any = None,
                       landmarks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The stacked landmark rows plus each episode's first forecast point.

    The landmark grid (0, 7, 14, ... days) rarely falls on the day the
    service first forecasts, the response assessment (day 1-14), where the
    response is already known but few days have elapsed: a grid-only model
    extrapolates there. Adding the forecast-point row of every episode (see
    :func:`forecast_point_dataset`) puts training rows where the product
    forecasts. A forecast-point row on a grid day duplicates the grid row
    and is dropped. Column ``grid_landmark`` marks the rows of the grid.
    Static kinds are unaffected (they use the landmark-0 rows only).
    """
    ld = landmark_dataset(cohort, definition) if landmarks is None else landmarks
    fp = forecast_point_dataset(cohort, definition)
    ld = ld.assign(grid_landmark=True)
    if len(fp) == 0:
        return ld.reset_index(drop=True)
    fp = fp[[c for c in ld.columns if c != "grid_landmark"]].assign(grid_landmark=False)
    both = pd.concat([ld, fp], ignore_index=True)
    both = both.drop_duplicates(["episode_id", "landmark"], keep="first")
    return both.sort_values(["episode_id", "landmark"], kind="stable").reset_index(drop=True)


def rows_for_kind(
    ld: pd.DataFrame, spec: FeatureSet, kind: str
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, FeatureSet]:
    """Training rows of ``kind`` from a landmark dataset: (X, lower, upper, groups, features).

    Static kinds get the landmark-0 rows and the static features, ``km`` no
    features, the landmark kind every row and every feature.
    """
    if kind in STATIC_KINDS:
        rows = ld[ld["landmark"] == 0].reset_index(drop=True)
        feats = FeatureSet((), {}) if kind == "km" else static_features(ld, spec)
    else:
        rows = ld.reset_index(drop=True)
        feats = spec
    return (
        rows,
        rows["lower"].to_numpy(dtype=float),
        rows["upper"].to_numpy(dtype=float),
        rows["patient_id"].to_numpy(dtype=object),
        feats,
    )


def training_data(cohort: Any, kind: str = DEFAULT_KIND, definition: Any = None,
                  landmarks: pd.DataFrame | None = None) -> TrainingData:
    """Build the training rows of ``kind`` from ``cohort``.

    Parameters
    ----------
    cohort : Cohort
    kind : str
        Model kind (``forecast.models.ESTIMATORS``).
    definition : OutcomeDefinition, optional
    landmarks : DataFrame, optional
        A precomputed ``landmark_dataset`` of the cohort (saves recomputing it).
    """
    ld = landmark_dataset(cohort, definition) if landmarks is None else landmarks
    if kind not in STATIC_KINDS and "grid_landmark" not in ld.columns:
        ld = training_landmarks(cohort, definition, ld)
    start = ld[ld["landmark"] == 0]
    summary = {
        "patients": int(len(cohort.patients)),
        "patients_with_episodes": int(ld["patient_id"].nunique()),
        "episodes": int(len(start)),
        "episodes_with_observed_waning": int(np.isfinite(start["upper"].to_numpy(float)).sum()),
        "landmark_rows": int(len(ld)),
        "forecast_point_rows": int((~ld["grid_landmark"]).sum()) if "grid_landmark" in ld else 0,
        "landmarks_days": sorted(int(x) for x in np.unique(
            ld.loc[ld["grid_landmark"], "landmark"] if "grid_landmark" in ld else ld["landmark"])),
    }
    X, lo, up, groups, feats = rows_for_kind(ld, spec_of(cohort), kind)
    summary["training_rows"] = int(len(X))
    return TrainingData(X, lo, up, groups, feats, summary)


def fit_kind(data: TrainingData, kind: str = DEFAULT_KIND, **params: Any) -> SurvivalEstimator:
    """Fit the estimator of ``kind`` on ``data`` (``params`` go to the estimator)."""
    est = make_estimator(kind, features=data.features, **params)
    return est.fit(data.X, data.lower, data.upper, groups=data.groups)


#: Windows (days since the session) of the population curve's hazard, the last one open.
POPULATION_EDGES: tuple[float, ...] = (0, 7, 14, 21, 28, 35, 42, 56, 70, 84, 112, 140, 182, 273)
#: Penalty on the differences between neighbouring windows' log hazards (per row).
POPULATION_SMOOTHING = 0.01


def population_curve(lower: np.ndarray, upper: np.ndarray, max_days: int = 365
                     ) -> dict[str, list[float]]:
    """Survival of the episodes on a daily grid ``0..max_days`` (stored in the card).

    A piecewise-constant hazard on ``POPULATION_EDGES``, fitted to the
    interval-censored episodes (the piecewise kind's likelihood without
    covariates) with neighbouring windows' log hazards kept close. The
    Turnbull NPMLE of the same rows puts its mass where the assessment
    intervals end: read day by day it stays at 0 for weeks and then jumps,
    which a clinician reads as the biology rather than the schedule.
    """
    lo = np.nan_to_num(np.asarray(lower, dtype=float), nan=0.0)
    up = np.asarray(upper, dtype=float)
    event = np.isfinite(up)
    edges = np.asarray(POPULATION_EDGES, dtype=float)
    exp_lo = window_exposure(np.maximum(lo, 0.0), edges)
    exp_up = window_exposure(np.where(event, np.maximum(up, lo), 0.0), edges)
    Z = np.zeros((len(lo), 0))
    w = np.ones(len(lo))
    n = max(len(lo), 1)
    D = np.diff(np.eye(edges.size), axis=0)

    def objective(a: np.ndarray) -> tuple[float, np.ndarray]:
        nll, grad = pwe_data_sums(a, Z, exp_lo, exp_up, event, w)
        da = D @ a
        return (nll / n + 0.5 * POPULATION_SMOOTHING * float(da @ da),
                grad / n + POPULATION_SMOOTHING * (D.T @ da))

    exposure = np.where(event[:, None], 0.5 * (exp_lo + exp_up), exp_lo).sum()
    a0 = np.full(edges.size, np.log(max(event.sum(), 1) / max(exposure, 1.0)))
    a = minimize(objective, a0, jac=True, method="L-BFGS-B",
                 options={"maxiter": 2000, "gtol": 1e-10}).x
    days = np.arange(0, max_days + 1, dtype=float)
    surv = np.exp(-(window_exposure(days, edges) @ np.exp(a)))
    return {"days": days.astype(int).tolist(), "survival": np.round(surv, 6).tolist()}


def registry_and_key(models_dir: Any) -> tuple[Any, Any]:
    """The writable registry folder and the signing key, checked before any training work
    (:class:`forecast.registry.RegistryError` when either is unusable)."""
    root = registry.check_writable(registry.models_dir(models_dir))
    try:
        return root, signing.signing_key()
    except signing.SignatureError as exc:
        raise registry.RegistryError(str(exc)) from None


def train_and_save(
    cohort: Any,
    models_dir: Any = None,
    *,
    kind: str = DEFAULT_KIND,
    n_bootstrap: int = 30,
    seed: int = 0,
    jobs: int = 1,
    penalizer: float | str = "auto",
    definition: Any = None,
    simulated: bool = False,
    progress: Any = None,
) -> str:
    """Train ``kind`` on ``cohort`` and save a new registry version; return its id.

    ``progress`` (optional) is called with a stage name before each stage.
    Raises :class:`forecast.models.ModelFitError` when the fit fails,
    ``ValueError`` when the cohort has no response episode, and
    :class:`forecast.registry.RegistryError` BEFORE any work when the
    registry is not writable or the configured signing key cannot be read.
    The version is signed with the configured key (``forecast.signing``).
    """
    step = progress or (lambda stage: None)
    root, key = registry_and_key(models_dir)
    definition = definition if definition is not None else OutcomeDefinition()
    step("features")
    ld = landmark_dataset(cohort, definition)
    data = training_data(cohort, kind, definition, landmarks=ld)
    if data.summary["episodes"] == 0:
        raise ValueError("no response episodes in the data: nothing to train on")
    step(f"fit {kind} (+{n_bootstrap} bootstrap)")
    est = fit_kind(data, kind, n_bootstrap=n_bootstrap, random_state=seed, n_jobs=jobs,
                   penalizer=penalizer)
    bundle = est.to_bundle()
    bundle.meta["estimator"] = {
        k: v for k, v in est.get_params().items() if k not in ("features", "n_jobs")
    }
    step("save")
    start = ld[ld["landmark"] == 0]
    training = {
        **data.summary,
        "kind": kind,
        "bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "simulated_data": bool(simulated),
        "fit_warnings": len(est.fit_warnings_),
    }
    fp = registry.fingerprint_cohort(
        cohort, episodes=data.summary["episodes"], landmark_rows=data.summary["landmark_rows"]
    )
    curve = population_curve(start["lower"].to_numpy(float), start["upper"].to_numpy(float))
    return registry.save_version(
        bundle, models_dir=root, definition=definition,
        fingerprint=fp, training=training, card={"population_curve": curve}, signing_key=key,
    )
