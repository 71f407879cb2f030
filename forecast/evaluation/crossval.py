"""Patient-grouped K-fold cross-validation: out-of-fold predictions of each model spec."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from forecast.contract import HORIZONS
from forecast.models import DEFAULT_KIND, FeatureSet, make_estimator
from forecast.training import STATIC_KINDS, rows_for_kind


def grouped_folds(groups: Any, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per row; all rows of a patient share one fold (seeded shuffle)."""
    codes, uniques = pd.factorize(np.asarray(groups))
    if n_folds < 2:
        raise ValueError("--folds must be at least 2")
    if len(uniques) < n_folds:
        raise ValueError(f"{len(uniques)} patients cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(len(uniques), dtype=int)
    fold_of_group[rng.permutation(len(uniques))] = np.arange(len(uniques)) % n_folds
    return fold_of_group[codes]


@dataclass
class ModelSpec:
    """What a fold refits: the kind and the estimator settings of the evaluated version."""

    kind: str = DEFAULT_KIND
    params: dict[str, Any] | None = None


def _fit_and_predict_fold(ld: pd.DataFrame, spec: FeatureSet, fold: np.ndarray, k: int,
              models: dict[str, ModelSpec], horizons: Sequence[int],
              fp: pd.DataFrame | None = None, fp_fold: np.ndarray | None = None,
              seed: int = 0, estimator_factory: Any = make_estimator) -> dict[str, Any]:
    """Fit every model of ``models`` on the rows outside fold ``k`` and predict the rows in it
    (episode start, landmark rows, forecast points); a failed fit is recorded, not raised."""
    train = ld[fold != k].reset_index(drop=True)
    test = ld[fold == k].reset_index(drop=True)
    test0 = test[test["landmark"] == 0].reset_index(drop=True)
    out: dict[str, Any] = {"test0_index": np.flatnonzero((fold == k) & (ld["landmark"] == 0)),
                           "test_index": np.flatnonzero(fold == k), "pred0": {}, "pred_lm": {},
                           "pred_fp": {}, "errors": {}}
    test_fp = None
    if fp is not None and fp_fold is not None:
        out["fp_index"] = np.flatnonzero(fp_fold == k)
        test_fp = fp.iloc[out["fp_index"]].reset_index(drop=True)
    h = np.asarray(horizons, float)
    with threadpool_limits(limits=1, user_api="blas"):
        for name, ms in models.items():
            X, lo, up, groups, feats = rows_for_kind(train, spec, ms.kind)
            params = dict(ms.params or {})
            params.update(n_bootstrap=0, n_jobs=1)
            # Seeded: the landmark kinds draw the family-selection split from it.
            params.setdefault("random_state", seed)
            try:
                est = estimator_factory(ms.kind, features=feats, **params).fit(X, lo, up, groups)
            except Exception as exc:  # noqa: BLE001 - recorded in the report, other models go on
                out["errors"][name] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            bundle = est.to_bundle()
            out["pred0"][name] = bundle.predict_risk(test0, h)
            if ms.kind not in STATIC_KINDS:
                out["pred_lm"][name] = bundle.predict_risk(test, h)
            if test_fp is not None:
                out["pred_fp"][name] = forecast_point_risk(bundle, test_fp, h)
    return out


def forecast_point_risk(bundle: Any, rows: pd.DataFrame, horizons: Sequence[float]) -> np.ndarray:
    """Risk within each horizon after as-of, as the service would compute it.

    A landmark bundle reads the features at as-of; a static bundle (time
    origin = the episode start) is conditioned on survival to the days
    already elapsed, ``since = rows["landmark"]``.
    """
    h = np.asarray(horizons, float)
    if bundle.time_origin in ("landmark", "as_of"):
        return bundle.predict_risk(rows, h)
    return bundle.predict_risk(rows, h, since=rows["landmark"].to_numpy(float))


def cross_validate(ld: pd.DataFrame, spec: FeatureSet, models: dict[str, ModelSpec], *,
                   n_folds: int = 5, seed: int = 0, jobs: int = 1,
                   horizons: Sequence[int] = HORIZONS, progress: Any = None,
                   fp: pd.DataFrame | None = None,
                   estimator_factory: Any = make_estimator) -> dict[str, Any]:
    """Out-of-fold predictions of each model (patient-grouped K-fold on the landmark dataset).

    ``seed`` draws the folds and seeds every fold's model whose settings give
    no ``random_state``, so a repeated call gives the same predictions.
    ``fp`` (optional, :func:`forecast.training.forecast_point_dataset`) gets
    out-of-fold predictions too; its rows go to the fold of their patient.
    ``estimator_factory(kind, **params)`` builds each fold's estimator.
    """
    fold = grouped_folds(ld["patient_id"].to_numpy(), n_folds, seed)
    fp_fold = None
    if fp is not None:
        fold_of = pd.Series(fold, index=ld["patient_id"].astype(str).to_numpy())
        fold_of = fold_of[~fold_of.index.duplicated()]
        fp_fold = (fold_of.reindex(fp["patient_id"].astype(str).to_numpy())
                   .fillna(-1).to_numpy(dtype=int))
    jobs_out = Parallel(n_jobs=jobs)(
        delayed(_fit_and_predict_fold)(ld, spec, fold, k, models, horizons, fp, fp_fold, seed,
                                       estimator_factory)
        for k in range(n_folds)
    )
    n0 = int((ld["landmark"] == 0).sum())
    start_pos = np.full(len(ld), -1)
    start_pos[np.flatnonzero(ld["landmark"].to_numpy() == 0)] = np.arange(n0)
    pred0 = {name: np.full((n0, len(horizons)), np.nan) for name in models}
    pred_lm = {name: np.full((len(ld), len(horizons)), np.nan) for name in models
               if models[name].kind not in STATIC_KINDS}
    n_fp = 0 if fp is None else len(fp)
    pred_fp = {name: np.full((n_fp, len(horizons)), np.nan) for name in models}
    errors: dict[str, list[str]] = {}
    for res in jobs_out:
        for name, p in res["pred0"].items():
            pred0[name][start_pos[res["test0_index"]]] = p
        for name, p in res["pred_lm"].items():
            pred_lm[name][res["test_index"]] = p
        for name, p in res["pred_fp"].items():
            pred_fp[name][res["fp_index"]] = p
        for name, e in res["errors"].items():
            errors.setdefault(name, []).append(e)
        if progress is not None:
            progress()
    return {"fold": fold, "pred0": pred0, "pred_lm": pred_lm, "pred_fp": pred_fp,
            "fp_fold": fp_fold, "errors": errors}

