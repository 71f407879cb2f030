"""Evaluation of a cohort (cross-validated) or a fitted bundle (holdout), and the targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from forecast.contract import HORIZONS
from forecast.evaluation.calibration import REFERENCE_REPS, calibrated_reference_ici
from forecast.evaluation.crossval import ModelSpec, cross_validate, forecast_point_risk
from forecast.evaluation.intervals import DEFAULT_CI_REPS, headline_bootstrap
from forecast.evaluation.metrics import fairness, subgroups, survival_metrics
from forecast.evaluation.oracle import oracle_conditional_risks, oracle_risks
from forecast.features import landmark_dataset
from forecast.models.nonparametric import turnbull_risk
from forecast.training import STATIC_KINDS, forecast_point_dataset, spec_of, training_landmarks

#: subgroups smaller than this get no survival curve of their own (too noisy to read)
MIN_CURVE_ROWS = 20


def survival_curves(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray,
                    groups: dict[str, np.ndarray] | None, horizons: Sequence[int]
                    ) -> dict[str, Any]:
    """Observed (Turnbull) against mean predicted survival at 0 and each horizon.

    ``overall`` and, per subgroup attribute and level with at least
    :data:`MIN_CURVE_ROWS` rows, the same curves (aggregates only).
    """
    days = [0, *[int(h) for h in horizons]]

    def curve(idx: np.ndarray) -> dict[str, Any]:
        obs = 1.0 - turnbull_risk(lower[idx], upper[idx], horizons)
        pred = 1.0 - np.nanmean(risk[idx], axis=0)
        return {"n": int(idx.sum()), "observed": [1.0, *np.round(obs, 5).tolist()],
                "predicted": [1.0, *np.round(pred, 5).tolist()]}

    out: dict[str, Any] = {"days": days, "overall": curve(np.ones(len(lower), dtype=bool))}
    by: dict[str, Any] = {}
    for attr, labels in (groups or {}).items():
        for level in sorted(set(labels.tolist())):
            idx = labels == level
            if idx.sum() >= MIN_CURVE_ROWS:
                by.setdefault(attr, {})[str(level)] = curve(idx)
    out["subgroups"] = by
    return out


def _model_block(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray,
                 groups: dict[str, np.ndarray] | None, horizons: Sequence[int]) -> dict[str, Any]:
    ok = np.all(np.isfinite(risk), axis=1)
    if not ok.any():
        return {"overall": None, "note": "no predictions (every fold failed, see errors)"}
    block = {"overall": survival_metrics(lower[ok], upper[ok], risk[ok], horizons)}
    if groups is not None:
        sub = {k: v[ok] for k, v in groups.items()}
        block["fairness"] = fairness(lower[ok], upper[ok], risk[ok], sub, horizons)
        block["survival_curves"] = survival_curves(lower[ok], upper[ok], risk[ok], sub,
                                                   horizons)
    return block


def evaluate_cohort(
    cohort: Any,
    spec_model: ModelSpec,
    *,
    definition: Any = None,
    truth: pd.DataFrame | None = None,
    n_folds: int = 5,
    seed: int = 0,
    jobs: int = 1,
    baselines: Sequence[str] = ("cox", "km"),
    horizons: Sequence[int] = HORIZONS,
    progress: Any = None,
    ci_reps: int = DEFAULT_CI_REPS,
) -> dict[str, Any]:
    """Cross-validated metrics of a model spec and the baselines (and the oracle if ``truth``).

    ``ci_reps`` patient-level bootstrap replicates give the headline figures'
    intervals (:func:`headline_bootstrap`; 0 skips them).

    Returns a JSON-able dict (see the module notes); the main model is
    reported under ``"model"``, baselines under their kind, the oracle under
    ``"oracle"``.
    """
    ld = landmark_dataset(cohort, definition)
    if len(ld) == 0:
        raise ValueError("no response episodes in the data: nothing to evaluate")
    if spec_model.kind not in STATIC_KINDS:  # the rows the dynamic kind trains on
        ld = training_landmarks(cohort, definition, ld)
    spec = spec_of(cohort)
    models = {"model": spec_model}
    for b in baselines:
        models[b] = ModelSpec(b, {"penalizer": (spec_model.params or {}).get("penalizer", 0.01)}
                              if b != "km" else {})
    fp = forecast_point_dataset(cohort, definition)
    cv = cross_validate(ld, spec, models, n_folds=n_folds, seed=seed, jobs=jobs,
                        horizons=horizons, progress=progress, fp=fp)
    start = ld[ld["landmark"] == 0].reset_index(drop=True)
    lo0 = start["lower"].to_numpy(float)
    up0 = start["upper"].to_numpy(float)
    groups = subgroups(start)
    out: dict[str, Any] = {
        "folds": n_folds,
        "seed": seed,
        "n_patients": int(start["patient_id"].nunique()),
        "n_episodes": int(len(start)),
        "n_events": int(np.isfinite(up0).sum()),
        "model_kind": spec_model.kind,
        "models": {},
        "errors": cv["errors"],
    }
    for name in models:
        out["models"][name] = _model_block(lo0, up0, cv["pred0"][name],
                                           groups if name == "model" else None, horizons)
    if truth is not None:
        orc = oracle_risks(start, truth, horizons)
        matched = np.all(np.isfinite(orc), axis=1)
        out["oracle_matched_episodes"] = int(matched.sum())
        if matched.any():
            out["models"]["oracle"] = _model_block(lo0[matched], up0[matched], orc[matched],
                                                   {k: v[matched] for k, v in groups.items()},
                                                   horizons)
            # The oracle exists only for the simulator's episodes: compare on those.
            out["on_oracle_episodes"] = {
                name: _model_block(lo0[matched], up0[matched], cv["pred0"][name][matched], None,
                                   horizons)
                for name in models
            }
    out["forecast_point"] = _forecast_point_block(fp, cv["pred_fp"], cv["fp_fold"], truth,
                                                  horizons, ci_reps=ci_reps, seed=seed)
    if cv["pred_lm"].get("model") is not None:
        block = _landmark_conditional_block(ld, cv["pred_lm"]["model"], horizons)
        if block is not None:
            out["landmark_conditional"] = block
    return out


def _landmark_conditional_block(ld: pd.DataFrame, pred: np.ndarray, horizons: Sequence[int]
                                ) -> dict[str, Any] | None:
    """Pooled metrics of the out-of-fold predictions on the grid landmark rows (None if none)."""
    ok = np.all(np.isfinite(pred), axis=1)  # rows of a failed fold have no prediction
    if "grid_landmark" in ld.columns:  # the grid rows only; the forecast point has its block
        ok &= ld["grid_landmark"].to_numpy(dtype=bool)
    if not ok.any():
        return None
    return {
        "n_rows": int(ok.sum()),
        "note": "all landmark rows of the test patients; rows of one episode are "
                "correlated, metrics are pooled point estimates (Uno's C skipped)",
        **survival_metrics(ld["lower"].to_numpy(float)[ok],
                           ld["upper"].to_numpy(float)[ok], pred[ok], horizons, uno=False),
    }


FORECAST_POINT_NOTE = (
    "First forecast point: one row per episode at its response assessment (the first "
    "PHQ-9 after the session that shows the response, when the service starts to "
    "forecast), risk of waning within h days after that date given everything known "
    "then; outcome = the residual interval (lower - s, upper - s] with s the response "
    "day. Landmark model: features at that date; static Cox/AFT and KM: conditional on "
    "survival to s, 1 - S(s + h) / S(s); oracle: the simulator's true P(T <= s + h | "
    "T > s). Episodes right-censored at the response assessment carry no information "
    "after it and are left out."
)


def _forecast_point_block(fp: pd.DataFrame, preds: dict[str, np.ndarray],
                          fp_fold: np.ndarray | None, truth: pd.DataFrame | None,
                          horizons: Sequence[int], *, ci_reps: int = 0,
                          seed: int = 0, reference_reps: int | None = None) -> dict[str, Any]:
    """Metrics at the first forecast point (the headline; see :data:`FORECAST_POINT_NOTE`).

    ``ci_reps`` bootstrap replicates of the headline figures;
    ``reference_reps`` draws of the calibrated reference (default: ``ci_reps``
    capped at :data:`REFERENCE_REPS`).
    """
    if reference_reps is None:
        reference_reps = min(int(ci_reps), REFERENCE_REPS)
    ok_rows = np.ones(len(fp), dtype=bool) if fp_fold is None else fp_fold >= 0
    lo = fp["lower"].to_numpy(float)[ok_rows]
    up = fp["upper"].to_numpy(float)[ok_rows]
    rows = fp.loc[ok_rows].reset_index(drop=True)
    groups = subgroups(rows)
    s = rows["landmark"].to_numpy(float)
    block: dict[str, Any] = {
        "note": FORECAST_POINT_NOTE,
        "n_patients": int(rows["patient_id"].nunique()),
        "n_episodes": int(len(rows)),
        "n_events": int(np.isfinite(up).sum()),
        "response_day": {"median": float(np.median(s)) if len(s) else None,
                         "min": float(s.min()) if len(s) else None,
                         "max": float(s.max()) if len(s) else None},
        "models": {},
    }
    if len(rows) == 0:
        return block
    for name, p in preds.items():
        block["models"][name] = _model_block(lo, up, p[ok_rows],
                                             groups if name == "model" else None, horizons)
        _add_floor(block["models"][name], lo, up, p[ok_rows], horizons, reference_reps, seed)
    if truth is not None:
        orc = oracle_conditional_risks(rows, truth, horizons)
        matched = np.all(np.isfinite(orc), axis=1)
        block["oracle_matched_episodes"] = int(matched.sum())
        if matched.any():
            block["models"]["oracle"] = _model_block(lo[matched], up[matched], orc[matched],
                                                     None, horizons)
            _add_floor(block["models"]["oracle"], lo[matched], up[matched], orc[matched],
                       horizons, reference_reps, seed)
            block["on_oracle_episodes"] = {
                name: _model_block(lo[matched], up[matched], p[ok_rows][matched], None,
                                   horizons)
                for name, p in preds.items()
            }
    if "model" in preds:
        # The headline's rows: those the oracle covers when there is one, else all.
        sel = np.ones(len(rows), dtype=bool) if truth is None else matched
        p = preds["model"][ok_rows]
        sel = sel & np.all(np.isfinite(p), axis=1)
        boot = headline_bootstrap(
            lo[sel], up[sel], p[sel], rows["patient_id"].to_numpy(object)[sel], horizons,
            None if truth is None or not sel.any() else orc[sel], reps=ci_reps, seed=seed)
        if boot is not None:
            block["bootstrap"] = boot
        own = ((block["models"]["model"].get("overall") or {}).get("calibrated_reference")
               if sel.all() else None)
        if own is not None:  # the headline rows are the model block's rows
            block["calibrated_reference"] = own
        elif reference_reps > 0 and sel.any():
            ref = calibrated_reference_ici(lo[sel], up[sel], p[sel], horizons,
                                           reps=reference_reps, seed=seed)
            if ref is not None:
                block["calibrated_reference"] = ref
    return block


def _add_floor(model_block: dict[str, Any], lo: np.ndarray, up: np.ndarray, risk: np.ndarray,
               horizons: Sequence[int], reps: int, seed: int) -> None:
    """The ICI noise floor (:func:`calibrated_reference_ici`) of a model block's rows, beside
    its ICI: ``overall.calibrated_reference`` and, per horizon, ``ici_floor`` = [mean,
    95th percentile] of the published ICI a calibrated model reads on those rows."""
    overall = model_block.get("overall")
    ok = np.all(np.isfinite(risk), axis=1)
    if reps <= 0 or not overall or not ok.any():
        return
    ref = calibrated_reference_ici(lo[ok], up[ok], risk[ok], horizons, reps=reps, seed=seed)
    if ref is None:
        return
    overall["calibrated_reference"] = ref
    for h, r in ref["by_horizon"].items():
        entry = overall["by_horizon"].get(h)
        if entry is not None:
            for key in ("ici", "ici_pseudo", "ici_austin"):
                if f"{key}_mean" in r:
                    entry[f"{key}_floor"] = [r[f"{key}_mean"], r[f"{key}_p95"]]


def evaluate_bundle(cohort: Any, bundle: Any, *, definition: Any = None,
                    truth: pd.DataFrame | None = None,
                    horizons: Sequence[int] = HORIZONS, ci_reps: int = 0) -> dict[str, Any]:
    """Metrics of a fitted bundle applied to another cohort (``--holdout``).

    ``ci_reps`` > 0 adds, at the first forecast point, the calibrated
    reference ICI (up to :data:`REFERENCE_REPS` draws) as in
    :func:`evaluate_cohort`; the bootstrap intervals are left to the
    cross-validation (on 17,000 holdout rows they cost about 2 minutes).
    """
    ld = landmark_dataset(cohort, definition)
    if len(ld) == 0:
        raise ValueError("no response episodes in the holdout data")
    start = ld[ld["landmark"] == 0].reset_index(drop=True)
    lo0, up0 = start["lower"].to_numpy(float), start["upper"].to_numpy(float)
    h = np.asarray(horizons, float)
    groups = subgroups(start)
    out: dict[str, Any] = {
        "n_patients": int(start["patient_id"].nunique()),
        "n_episodes": int(len(start)),
        "n_events": int(np.isfinite(up0).sum()),
        "models": {"model": _model_block(lo0, up0, bundle.predict_risk(start, h), groups,
                                         horizons)},
    }
    if truth is not None:
        orc = oracle_risks(start, truth, horizons)
        matched = np.all(np.isfinite(orc), axis=1)
        if matched.any():
            out["models"]["oracle"] = _model_block(lo0[matched], up0[matched], orc[matched],
                                                   {k: v[matched] for k, v in groups.items()},
                                                   horizons)
    fp = forecast_point_dataset(cohort, definition)
    out["forecast_point"] = _forecast_point_block(
        fp, {"model": forecast_point_risk(bundle, fp, h)} if len(fp) else {}, None, truth,
        horizons, reference_reps=min(int(ci_reps), REFERENCE_REPS))
    if bundle.time_origin in ("landmark", "as_of"):
        out["landmark_conditional"] = {
            "n_rows": int(len(ld)),
            **survival_metrics(ld["lower"].to_numpy(float), ld["upper"].to_numpy(float),
                               bundle.predict_risk(ld, h), horizons, uno=False),
        }
    return out


def targets(cv: dict[str, Any]) -> dict[str, Any]:
    """The done-when figures at the FIRST FORECAST POINT (the response assessment).

    AUC(28) gap to the oracle, ICI at 28/56, and whether the model beats the
    static Cox model and KM (each conditional on survival to the response
    day). The oracle comparison uses the episodes the oracle covers. The same
    figures at the episode start are kept under ``episode_start``.
    """
    fp = cv.get("forecast_point") or {}
    out = _targets_of(fp.get("models", {}), fp.get("on_oracle_episodes"))
    boot = fp.get("bootstrap") or {}
    for key, name in (("auc28", "auc28_model"), ("ici28", "ici28_model"),
                      ("ici56", "ici56_model"), ("auc28_gap_to_oracle", "auc28_gap_to_oracle")):
        if key in boot:
            out[f"{name}_ci{round(100 * boot['level'])}"] = boot[key]
    if boot:
        out["ci_note"] = (f"{boot['reps']} patient-level bootstrap resamples of the out-of-fold "
                          "predictions; the targets compare the point estimates")
    ref = (fp.get("calibrated_reference") or {}).get("by_horizon") or {}
    for h in (28, 56):
        r = ref.get(str(h)) or {}
        if "ici_mean" in r:
            # what a perfectly calibrated model reads on these rows (mean, 95th percentile)
            out[f"ici{h}_calibrated_reference"] = [r["ici_mean"], r["ici_p95"]]
        if "ici_pseudo_mean" in r:
            out[f"ici{h}_pseudo_calibrated_reference"] = [r["ici_pseudo_mean"],
                                                          r["ici_pseudo_p95"]]
        if "ici_austin_mean" in r:
            out[f"ici{h}_austin_calibrated_reference"] = [r["ici_austin_mean"],
                                                          r["ici_austin_p95"]]
    out["evaluated_at"] = "first forecast point (response assessment)"
    out["episode_start"] = _targets_of(cv.get("models", {}), cv.get("on_oracle_episodes"))
    return out


def _targets_of(all_models: dict[str, Any], on_oracle: dict[str, Any] | None) -> dict[str, Any]:
    models = dict(all_models)
    if on_oracle:  # the oracle comparison on the episodes the oracle covers
        models.update(on_oracle)

    def get(name: str, h: int, key: str) -> float | None:
        o = (models.get(name) or {}).get("overall") or {}
        return o.get("by_horizon", {}).get(str(h), {}).get(key)

    out: dict[str, Any] = {
        "auc28_model": get("model", 28, "auc"),
        "auc28_oracle": get("oracle", 28, "auc"),
        "ici28_model": get("model", 28, "ici"),
        "ici56_model": get("model", 56, "ici"),
        "ici28_model_pseudo": get("model", 28, "ici_pseudo"),
        "ici56_model_pseudo": get("model", 56, "ici_pseudo"),
        "ici28_model_austin": get("model", 28, "ici_austin"),
        "ici56_model_austin": get("model", 56, "ici_austin"),
        "slope28_model": get("model", 28, "slope"),
        "slope56_model": get("model", 56, "slope"),
    }
    if out["auc28_model"] is not None and out["auc28_oracle"] is not None:
        out["auc28_gap_to_oracle"] = out["auc28_oracle"] - out["auc28_model"]
    for base in ("cox", "km"):
        if base in models and (models.get("model") or {}).get("overall"):
            mb = models["model"]["overall"]
            bb = models[base].get("overall") or {}
            out[f"beats_{base}"] = {
                "auc28": _better(get("model", 28, "auc"), get(base, 28, "auc"), True),
                "ibs": _better(mb.get("ibs"), bb.get("ibs"), False),
                "harrell_c": _better(mb.get("harrell_c"), bb.get("harrell_c"), True),
            }
    return out


def _better(a: float | None, b: float | None, higher: bool) -> bool | None:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
        return None
    return bool(a > b) if higher else bool(a < b)
