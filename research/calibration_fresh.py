"""The cross-validated models' calibration measured on a large fresh cohort.

``forecast evaluate`` (and ``bench/modelling_targets.py``) reads the ICI of
out-of-fold predictions on the ~6,000 first-forecast-point rows of a
5,000-patient cohort. This script asks how good those same fold models
really are, and how much the reading depends on the estimator: it

1. simulates the training cohort (``--patients``, default 5,000, ``--seed``)
   and fits the default model on each patient-grouped fold's training part
   (5 folds, fold seed 0, estimator seeded by 0: the fold models of
   ``evaluate_cohort(..., seed=0)``, which ``research/model_variants.py`` runs);
2. simulates a fresh cohort of ``--test-patients`` (default 50,000) from the
   same generator (seed + 10,000) and predicts its first-forecast-point rows
   with each fold model;
3. prints, per fold model and at 28 and 56 days, the ICI read three ways on
   those rows:

   - ``Austin``: Cox hazard regression on the complementary log-log of the
     risk, administratively censored at h (``ici_austin``; the library's
     headline until 2026-12-06);
   - ``pseudo``: smoothed Kaplan-Meier pseudo-observations (``ici``, the
     headline since);
   - ``groups``: the mean absolute difference between the mean predicted risk
     and the Turnbull estimate in each of 20 groups of predicted risk, a
     nonparametric reading (no model of the calibration curve) that is
     accurate at this size (about 3,000 rows a group);

   plus calibration-in-the-large at 56 days (Turnbull observed minus mean
   predicted risk), the calibration slope, and AUC at 28 days with the
   simulator's oracle.

Usage: ``python research/calibration_fresh.py ['{"distribution": "weibull"}'] [--seed 2026]
[--kind dynamic] [--patients 5000] [--test-patients 50000] [--folds 5] [--sim JSON]``; the
optional JSON gives estimator settings, as for ``research/model_variants.py``; ``--sim`` changes
the simulator's mechanism (``SimulationParams`` fields) for both cohorts. About 90 s a seed
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "calibration_fresh.json"
GROUPS = 20


def grouped_error(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray, h: float,
                  groups: int = GROUPS) -> float:
    """Mean over rows of |mean predicted risk - Turnbull risk at h| in the row's risk group."""
    from forecast.evaluation import turnbull_risk

    edges = np.quantile(risk, np.linspace(0.0, 1.0, groups + 1))
    g = np.clip(np.searchsorted(edges, risk, side="right") - 1, 0, groups - 1)
    err = np.zeros(len(risk))
    for k in range(groups):
        m = g == k
        if m.any():
            err[m] = abs(float(risk[m].mean()) - float(turnbull_risk(lower[m], upper[m], [h])[0]))
    return float(err.mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--patients", type=int, default=5000)
    p.add_argument("--test-patients", type=int, default=50_000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--kind", default=None, help="model kind (default: the default kind)")
    p.add_argument("--sim", default="{}",
                   help="SimulationParams overrides for both cohorts, as JSON "
                        "(e.g. '{\"relapse_detect_days\": 9}')")
    p.add_argument("params", nargs="?", default="{}",
                   help="estimator settings as JSON (as research/model_variants.py)")
    args = p.parse_args(argv)
    params = {"random_state": 0, **json.loads(args.params)}

    from threadpoolctl import threadpool_limits

    from forecast.contract import HORIZONS
    from forecast.evaluation import (
        forecast_point_risk,
        grouped_folds,
        oracle_conditional_risks,
        survival_metrics,
    )
    from forecast.features import landmark_dataset
    from forecast.models import DEFAULT_KIND, make_estimator
    from forecast.simulation import SimulationParams, simulate
    from forecast.training import (
        forecast_point_dataset,
        rows_for_kind,
        spec_of,
        training_landmarks,
    )

    kind = args.kind or DEFAULT_KIND
    t0 = time.perf_counter()
    sim_overrides = json.loads(args.sim)
    sim = SimulationParams(**sim_overrides)
    train = simulate(args.patients, args.seed, params=sim)
    ld = training_landmarks(train.cohort, None, landmark_dataset(train.cohort))
    spec = spec_of(train.cohort)
    test = simulate(args.test_patients, args.seed + 10_000, params=sim)
    fp = forecast_point_dataset(test.cohort)
    lo, up = fp["lower"].to_numpy(float), fp["upper"].to_numpy(float)
    h = np.asarray(HORIZONS, dtype=float)
    oracle = oracle_conditional_risks(fp, test.truth)
    ok = np.all(np.isfinite(oracle), axis=1)
    o28 = survival_metrics(lo[ok], up[ok], oracle[ok], HORIZONS, uno=False,
                           calibrate=False)["by_horizon"]["28"]["auc"]
    fold = grouped_folds(ld["patient_id"].to_numpy(), args.folds, 0)
    print(f"{kind} {json.dumps(params)}; simulator {json.dumps(sim_overrides)}")
    print(f"training cohort: {args.patients} patients (seed {args.seed}); fresh cohort: "
          f"{args.test_patients} patients (seed {args.seed + 10_000}), {len(fp)} forecast-point "
          f"rows; oracle AUC(28) {o28:.3f}")
    print(f"{'fold':>4} {'family':>11} {'AUC28':>6} "
          + " ".join(f"{'ICI' + str(d) + ' ' + w:>14}" for d in (28, 56)
                     for w in ("Austin", "pseudo", "groups"))
          + f" {'CITL56':>7} {'slope56':>7}")
    rows = []
    for k in range(args.folds):
        X, l_, u_, g_, feats = rows_for_kind(ld[fold != k].reset_index(drop=True), spec, kind)
        with threadpool_limits(limits=1, user_api="blas"):
            est = make_estimator(kind, features=feats, n_bootstrap=0,
                                 **params).fit(X, l_, u_, g_)
        risk = forecast_point_risk(est.to_bundle(), fp, h)
        m = survival_metrics(lo, up, risk, HORIZONS, uno=False)["by_horizon"]
        row = {"fold": k, "family": est.family_,
               "auc28": survival_metrics(lo[ok], up[ok], risk[ok], HORIZONS, uno=False,
                                         calibrate=False)["by_horizon"]["28"]["auc"]}
        for d in (28, 56):
            j = HORIZONS.index(d)
            row[f"ici{d}_austin"] = m[str(d)].get("ici_austin")
            row[f"ici{d}_pseudo"] = m[str(d)]["ici"]  # the reported ICI
            row[f"ici{d}_groups"] = grouped_error(lo, up, risk[:, j], float(d))
        row["citl56"] = m["56"].get("citl")
        row["slope56"] = m["56"].get("slope")
        rows.append(row)
        print(f"{k:>4} {row['family']:>11} {row['auc28']:>6.3f} "
              + " ".join(f"{row[f'ici{d}_{w}']:>14.3f}" for d in (28, 56)
                         for w in ("austin", "pseudo", "groups"))
              + f" {row['citl56']:>+7.3f} {row['slope56']:>7.2f}", flush=True)
    result = {"seed": args.seed, "kind": kind, "params": params, "sim": sim_overrides,
              "patients": args.patients,
              "test_patients": args.test_patients, "test_rows": len(fp),
              "oracle_auc28": o28, "folds": rows, "seconds": time.perf_counter() - t0,
              "command": f"python research/calibration_fresh.py '{args.params}' --kind {kind} "
                         f"--seed {args.seed} --sim '{args.sim}' "
                         f"--patients {args.patients} --test-patients {args.test_patients}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
