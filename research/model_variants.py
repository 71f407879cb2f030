"""Variants of the default model at the first forecast point, over several seeds.

For each seed: simulate a cohort, then cross-validate (5 patient-grouped folds,
fold seed 0, the evaluation of ``forecast evaluate``) the model kind with the
estimator settings given as JSON, and print AUC(28) against the simulator's
oracle and ICI at 28 / 56 days at the first forecast point (the targets of
``bench/modelling_targets.py``, without the baselines, so about 35 s a seed).

``--point-only`` instead fits the model on the first-forecast-point rows alone
(one row per episode, the residual outcome), a diagnostic of how much the
data at that point can discriminate, free of the stacked landmark rows.

``--cohort DIR`` cross-validates on a contract folder instead (a clinic's
data, or another generator's cohort), with ``--folds`` folds (with
``--point-only`` too): there is no oracle, so it prints Harrell's C, AUC
at 7 / 28 / 56 days, ICI at 28 / 56 days and the slope at 56 days at the
first forecast point.

Usage::

    python research/model_variants.py '{"distribution": "weibull"}' --seeds 2026,2027,2028
    python research/model_variants.py '{"time_interactions": null}' --kind landmark --point-only
    python research/model_variants.py '{"window_penalizer": 0.1}' --cohort DIR --folds 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def depth_oracle_auc28(res, fp, ok: np.ndarray) -> float:
    """AUC(28) of the simulator's depth oracle on the first-forecast-point rows ``ok``."""
    from forecast.contract import HORIZONS
    from forecast.evaluation import _truth_rows, survival_metrics
    from forecast.simulation import depth_oracle_risk, truth_location

    idx = _truth_rows(fp, res.truth)
    rows = fp[ok & (idx >= 0)]
    t = res.truth.iloc[idx[ok & (idx >= 0)]].reset_index(drop=True)
    lat = res.latent.set_index("patient_id").loc[t["patient_id"]].reset_index(drop=True)
    risk = depth_oracle_risk(truth_location(t, res.params.wane_scale), lat["frailty"],
                             lat["depth"], lat["response_logit_rest"], res.params, HORIZONS,
                             rows["landmark"].to_numpy(float))
    m = survival_metrics(rows["lower"].to_numpy(float), rows["upper"].to_numpy(float), risk,
                         HORIZONS, uno=False, calibrate=False)
    return m["by_horizon"]["28"]["auc"]


def cross_validated(seed: int, kind: str, params: dict, patients: int, jobs: int) -> dict:
    from forecast.evaluation import ModelSpec, evaluate_cohort, oracle_conditional_risks
    from forecast.simulation import simulate
    from forecast.training import forecast_point_dataset

    res = simulate(patients, seed)
    out = evaluate_cohort(res.cohort, ModelSpec(kind, params), truth=res.truth, n_folds=5,
                          seed=0, jobs=jobs, baselines=())
    fp = out["forecast_point"]
    m = fp["on_oracle_episodes"]["model"]["overall"]["by_horizon"]
    o = fp["models"]["oracle"]["overall"]["by_horizon"]
    rows = forecast_point_dataset(res.cohort)
    ok = np.all(np.isfinite(oracle_conditional_risks(rows, res.truth)), axis=1)
    return {"auc28": m["28"]["auc"], "oracle_auc28": o["28"]["auc"],
            "depth_oracle_auc28": depth_oracle_auc28(res, rows, ok),
            "ici28": m["28"]["ici"], "ici56": m["56"]["ici"], "citl56": m["56"].get("citl"),
            "austin56": m["56"].get("ici_austin"), "slope56": m["56"].get("slope"),
            "fold_errors": out.get("errors") or {}}


def _point_only_predictions(cohort, kind: str, params: dict, folds: int, seed: int):
    """(first-forecast-point rows, out-of-fold risks) of the kind fitted on those rows alone."""
    from threadpoolctl import threadpool_limits

    from forecast.contract import HORIZONS
    from forecast.evaluation import grouped_folds
    from forecast.models import make_estimator
    from forecast.training import forecast_point_dataset, spec_of

    fp = forecast_point_dataset(cohort)
    spec = spec_of(cohort)
    fold = grouped_folds(fp["patient_id"].to_numpy(), folds, 0)
    h = np.asarray(HORIZONS, dtype=float)
    pred = np.full((len(fp), len(h)), np.nan)
    with threadpool_limits(1, "blas"):
        for k in range(folds):
            train = fp[fold != k].reset_index(drop=True)
            est = make_estimator(kind, features=spec, random_state=seed, **params).fit(
                train, train["lower"].to_numpy(float), train["upper"].to_numpy(float),
                train["patient_id"].to_numpy(object))
            pred[fold == k] = est.to_bundle().predict_risk(
                fp[fold == k].reset_index(drop=True), h)
    return fp, pred


def point_only(seed: int, kind: str, params: dict, patients: int) -> dict:
    from forecast.contract import HORIZONS
    from forecast.evaluation import oracle_conditional_risks, survival_metrics
    from forecast.simulation import simulate

    res = simulate(patients, seed)
    fp, pred = _point_only_predictions(res.cohort, kind, params, 5, seed)
    orc = oracle_conditional_risks(fp, res.truth, HORIZONS)
    ok = np.all(np.isfinite(orc), axis=1)
    lo, up = fp["lower"].to_numpy(float)[ok], fp["upper"].to_numpy(float)[ok]
    m = survival_metrics(lo, up, pred[ok], HORIZONS, uno=False)["by_horizon"]
    o = survival_metrics(lo, up, orc[ok], HORIZONS, uno=False, calibrate=False)["by_horizon"]
    return {"auc28": m["28"]["auc"], "oracle_auc28": o["28"]["auc"],
            "depth_oracle_auc28": depth_oracle_auc28(res, fp, ok),
            "ici28": m["28"]["ici"], "ici56": m["56"]["ici"], "citl56": None,
            "austin56": m["56"].get("ici_austin"), "slope56": m["56"].get("slope"),
            "fold_errors": {}}


def on_cohort(path: str, kind: str, params: dict, folds: int, jobs: int,
              point: bool = False) -> dict:
    """First-forecast-point metrics of the cross-validation on a contract folder."""
    from forecast.contract import HORIZONS
    from forecast.data import load_cohort
    from forecast.evaluation import ModelSpec, evaluate_cohort, survival_metrics

    cohort = load_cohort(path)
    if point:
        fp, pred = _point_only_predictions(cohort, kind, params, folds, 0)
        m = survival_metrics(fp["lower"].to_numpy(float), fp["upper"].to_numpy(float), pred,
                             HORIZONS, uno=False)
        errors = {}
    else:
        out = evaluate_cohort(cohort, ModelSpec(kind, params), n_folds=folds, seed=0,
                              jobs=jobs, baselines=(), ci_reps=0)
        m = out["forecast_point"]["models"]["model"]["overall"]
        errors = out.get("errors") or {}
    bh = m["by_horizon"]
    return {"harrell_c": m["harrell_c"], **{f"auc{h}": bh[str(h)]["auc"] for h in (7, 28, 56)},
            "ici28": bh["28"]["ici"], "ici56": bh["56"]["ici"], "slope56": bh["56"].get("slope"),
            "fold_errors": errors}


def _f(v: float | None, width: int = 6, digits: int = 3) -> str:
    return "-".rjust(width) if v is None else f"{v:>{width}.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("params", nargs="?", default="{}", help="estimator settings as JSON")
    p.add_argument("--kind", default=None, help="model kind (default: the default kind)")
    p.add_argument("--seeds", default="2026,2027,2028")
    p.add_argument("--patients", type=int, default=5000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--point-only", action="store_true",
                   help="fit on the first-forecast-point rows only (diagnostic)")
    p.add_argument("--cohort", default=None,
                   help="cross-validate on this contract folder instead of simulated seeds")
    p.add_argument("--folds", type=int, default=5, help="folds of --cohort")
    args = p.parse_args(argv)
    params = json.loads(args.params)
    if args.kind is None:
        from forecast.bundle import DEFAULT_KIND

        args.kind = DEFAULT_KIND
    print(f"{args.kind} {json.dumps(params)}" + (" (point-only)" if args.point_only else ""))
    if args.cohort is not None:
        t0 = time.perf_counter()
        r = on_cohort(args.cohort, args.kind, params, args.folds, args.jobs, args.point_only)
        print(f"{'C':>6} {'AUC7':>6} {'AUC28':>6} {'AUC56':>6} {'ICI28':>6} {'ICI56':>6} "
              f"{'slp56':>5} {'s':>4}")
        print(f"{r['harrell_c']:>6.3f} {r['auc7']:>6.3f} {r['auc28']:>6.3f} {r['auc56']:>6.3f} "
              f"{r['ici28']:>6.3f} {r['ici56']:>6.3f} {_f(r['slope56'], 5, 2)} "
              f"{time.perf_counter() - t0:>4.0f}"
              + (f"  failed folds: {r['fold_errors']}" if r["fold_errors"] else ""))
        return 0
    print(f"{'seed':>6} {'AUC28':>6} {'oracle':>6} {'gap':>6} {'depth':>6} {'ICI28':>6} "
          f"{'ICI56':>6} {'CITL56':>7} {'aICI56':>6} {'slp56':>5} {'s':>4}")
    for seed in (int(x) for x in args.seeds.split(",")):
        t0 = time.perf_counter()
        r = (point_only(seed, args.kind, params, args.patients) if args.point_only
             else cross_validated(seed, args.kind, params, args.patients, args.jobs))
        citl = "-" if r["citl56"] is None else f"{r['citl56']:+.3f}"
        print(f"{seed:>6} {r['auc28']:>6.3f} {r['oracle_auc28']:>6.3f} "
              f"{r['oracle_auc28'] - r['auc28']:>6.3f} {r['depth_oracle_auc28']:>6.3f} "
              f"{r['ici28']:>6.3f} {r['ici56']:>6.3f} "
              f"{citl:>7} {_f(r['austin56'])} {_f(r['slope56'], 5, 2)} "
              f"{time.perf_counter() - t0:>4.0f}"
              + (f"  failed folds: {r['fold_errors']}" if r["fold_errors"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
