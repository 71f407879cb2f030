"""Which time scale limits the 56-day calibration: piecewise-exponential probes.

The dynamic model (the default when this probe was written) meets ICI(28)
but not ICI(56) on the fresh cohorts of ``research/calibration_fresh.py``; the
landmark kind does the
opposite. Both are AFT models, so this script asks whether the family or the
time scale is to blame. It fits, on the training part of one or more of the
cross-validation's folds (the folds of ``calibration_fresh.py``), a
piecewise-exponential hazard model with a free baseline (one log hazard per
window) on one of two time scales:

- ``session``: time since the episode's session, each landmark row
  left-truncated at its entry (the last waning-free assessment), as the
  dynamic kind does; the risk within h days is
  ``1 - exp(-(H(start + h) - H(entry)))``. The covariate effects may change
  with the time since the landmark (``--effect-edges``, in days after it;
  the part before the landmark counts to the first window);
- ``residual``: time since the landmark, as the landmark kind does; the
  effects may change over the same residual windows as the baseline.

The effects are ``beta + delta_j`` in window j; ``--window-penalty`` is the
L2 penalty on the deltas (large: one effect for all windows, i.e.
proportional hazards), ``--penalizer`` the penalty on beta. Both are on the
mean log-likelihood of the interval-censored rows, over standardised
columns (the default model's encoder and features, time interactions
included). The fitted models are scored on the first-forecast-point rows of
a fresh simulated cohort (seed + 10,000) as ``calibration_fresh.py`` scores
the fold models: AUC(28), ICI(28/56) by pseudo-observations and by Turnbull
in 20 risk groups, calibration slope and calibration-in-the-large.

A probe, not a product model: no bundle, no convergence checks beyond the
optimiser's flag, gradients by autograd (a lifelines dependency).

Usage: ``python research/time_scale_check.py --scale session|residual [--seed 2027]
[--folds 0,1] [--window-penalty 0.01] [--penalizer 0.01]``. About 20 s a fold
plus 40 s of simulation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_fresh import grouped_error  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "time_scale_check.json"


def _edges(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.split(",")])


def overlap(t: np.ndarray, shift: np.ndarray, eff_edges: np.ndarray | None,
            base_edges: np.ndarray) -> np.ndarray:
    """(n, J, M): days of [0, t] in effect window j and baseline window m.

    Effect window j is ``shift`` plus ``eff_edges[j:j + 2]``; ``eff_edges``
    None makes the effect windows the baseline windows (J = M, diagonal).
    """
    t = np.asarray(t, float)[:, None, None]
    s = np.asarray(shift, float)[:, None, None]
    eff = np.array([-np.inf, np.inf]) if eff_edges is None else eff_edges
    lo = np.maximum(base_edges[None, None, :-1], s + eff[None, :-1, None])
    hi = np.minimum(np.minimum(base_edges[None, None, 1:], s + eff[None, 1:, None]), t)
    o = np.clip(hi - lo, 0.0, None)
    if eff_edges is None:
        o = np.einsum("nm,jm->njm", o[:, 0, :], np.eye(len(base_edges) - 1))
    return o


def fit_pwe(Z: np.ndarray, O_entry: np.ndarray, O_lo: np.ndarray, O_up: np.ndarray,
            event: np.ndarray, window_penalty: float, penalizer: float) -> tuple[np.ndarray, bool]:
    """Penalised interval-censored, left-truncated piecewise-exponential fit.

    Cumulative hazard of row i to a time with overlaps ``O[i, j, m]``:
    ``sum_j exp(z_i (beta + delta_j)) sum_m O[i, j, m] exp(alpha_m)``.
    Returns ``theta = [alpha (M), beta (p), delta (J x p)]`` and the optimiser's flag.
    """
    import autograd.numpy as anp
    from autograd import value_and_grad
    from scipy.optimize import minimize

    n, p = Z.shape
    J, M = O_lo.shape[1], O_lo.shape[2]

    def objective(th: np.ndarray) -> float:
        alpha, beta, delta = th[:M], th[M:M + p], th[M + p:].reshape(J, p)
        eff = anp.exp(anp.dot(Z, beta)[:, None] + anp.dot(Z, delta.T))
        b0 = anp.exp(alpha)
        h_e = anp.sum(eff * anp.dot(O_entry, b0), axis=1)
        h_l = anp.sum(eff * anp.dot(O_lo, b0), axis=1)
        h_u = anp.sum(eff * anp.dot(O_up, b0), axis=1)
        gap = anp.maximum(h_u - h_l, 1e-12)
        ll = -(h_l - h_e) + anp.where(event, anp.log(-anp.expm1(-gap)), 0.0)
        return (-anp.mean(ll) + 0.5 * penalizer * anp.sum(beta**2)
                + 0.5 * window_penalty * anp.sum(delta**2))

    theta0 = np.zeros(M + p + J * p)
    theta0[:M] = np.log(0.01)
    res = minimize(value_and_grad(objective), theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000})
    return res.x, bool(res.success)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=("session", "residual", "entry"), default="session")
    p.add_argument("--seed", type=int, default=2027)
    p.add_argument("--folds", default="0", help="comma-separated folds of the 5-fold CV")
    p.add_argument("--patients", type=int, default=5000)
    p.add_argument("--test-patients", type=int, default=50_000)
    p.add_argument("--window-penalty", type=float, default=0.01)
    p.add_argument("--penalizer", type=float, default=0.01)
    p.add_argument("--base-edges", default=None,
                   help="baseline windows, days (session default 0,7,14,21,28,42,56,84,120,inf; "
                        "residual default 0,7,14,28,42,56,84,inf)")
    p.add_argument("--effect-edges", default=None,
                   help="effect windows, days after the landmark (session default "
                        "-inf,7,14,28,56,inf; residual: the baseline windows)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    from forecast.bundle import Encoder, clock_arrays
    from forecast.contract import HORIZONS
    from forecast.evaluation import grouped_folds, survival_metrics
    from forecast.features import landmark_dataset
    from forecast.models import make_estimator
    from forecast.simulation import simulate
    from forecast.training import (
        forecast_point_dataset,
        rows_for_kind,
        spec_of,
        training_landmarks,
    )

    session = args.scale == "session"
    base = _edges(args.base_edges or ("0,7,14,21,28,42,56,84,120,inf" if session
                                      else "0,7,14,28,42,56,84,inf"))
    # residual: the effect windows are the baseline's (eff None)
    eff = _edges(args.effect_edges or "-inf,7,14,28,56,inf") if session else None
    t0 = time.perf_counter()
    train = simulate(args.patients, args.seed)
    ld = training_landmarks(train.cohort, None, landmark_dataset(train.cohort))
    spec = spec_of(train.cohort)
    test = simulate(args.test_patients, args.seed + 10_000)
    fp = forecast_point_dataset(test.cohort)
    lo, up = fp["lower"].to_numpy(float), fp["upper"].to_numpy(float)
    fold = grouped_folds(ld["patient_id"].to_numpy(), 5, 0)
    h = np.asarray(HORIZONS, dtype=float)
    print(f"{args.scale} time scale; baseline windows {base.tolist()}; effect windows "
          f"{eff.tolist() if eff is not None else 'the baseline windows'}; window penalty "
          f"{args.window_penalty}, penalizer {args.penalizer}; seed {args.seed}")
    rows = []
    for k in (int(x) for x in args.folds.split(",")):
        # the probes share the dynamic kind's rows, features and clock helpers
        X, l_, u_, _, feats = rows_for_kind(ld[fold != k].reset_index(drop=True), spec,
                                            "dynamic")
        proto = make_estimator("dynamic", features=feats)
        numeric, categorical = proto._spec()
        enc = Encoder.fit(X, numeric, categorical, time_feature="elapsed_days",
                          time_interactions=proto._interactions(X, numeric))
        Z = enc.transform(X)[:, enc.active]
        Zf = enc.transform(fp)[:, enc.active]
        start_f, entry_f = clock_arrays(fp)
        if session:
            L, U, E, S = proto._clock_rows(X, l_, u_)
        elif args.scale == "entry":  # from the last waning-free assessment: known survived
            L, U, E, _ = proto._clock_rows(X, l_, u_)
            L, U = L - E, U - E
            E, S = np.zeros(len(X)), np.zeros(len(X))
        else:  # from the landmark, no left truncation
            L, U, E, S = l_, u_, np.zeros(len(X)), np.zeros(len(X))
        event = np.isfinite(U)
        ov = [overlap(t, S, eff, base) for t in (E, L, np.where(event, U, 0.0))]
        t1 = time.perf_counter()
        theta, ok = fit_pwe(Z, *ov, event, args.window_penalty, args.penalizer)
        M, pz = len(base) - 1, Z.shape[1]
        alpha, beta, delta = theta[:M], theta[M:M + pz], theta[M + pz:].reshape(-1, pz)
        effect = np.exp((Zf @ beta)[:, None] + Zf @ delta.T)
        b0 = np.exp(alpha)
        if args.scale == "entry":  # from the entry: risk by (start - entry) + h
            start_f, entry_f = start_f - entry_f, np.zeros(len(fp))
        elif not session:  # the fresh rows from their landmark: no entry, shift 0
            start_f, entry_f = np.zeros(len(fp)), np.zeros(len(fp))
        cum = [(effect * (overlap(t, start_f, eff, base) @ b0)).sum(axis=1)
               for t in (entry_f, *(start_f + d for d in h))]
        risk = np.column_stack([-np.expm1(-(c - cum[0])) for c in cum[1:]])
        m = survival_metrics(lo, up, risk, HORIZONS, uno=False)["by_horizon"]
        row = {"fold": k, "converged": ok, "fit_s": round(time.perf_counter() - t1, 1),
               "auc28": m["28"]["auc"]}
        for d in (28, 56):
            j = HORIZONS.index(d)
            row[f"ici{d}_pseudo"] = m[str(d)]["ici"]
            row[f"ici{d}_groups"] = grouped_error(lo, up, risk[:, j], float(d))
            row[f"slope{d}"] = m[str(d)].get("slope")
            row[f"citl{d}"] = m[str(d)].get("citl")
        rows.append(row)
        print(f"fold {k} (converged {ok}, {row['fit_s']} s): AUC28 {row['auc28']:.3f}; "
              + "; ".join(f"ICI{d} pseudo {row[f'ici{d}_pseudo']:.3f} groups "
                          f"{row[f'ici{d}_groups']:.3f} slope {row[f'slope{d}']:.2f} "
                          f"CITL {row[f'citl{d}']:+.3f}" for d in (28, 56)), flush=True)
    result = {"scale": args.scale, "seed": args.seed, "base_edges": base.tolist(),
              "effect_edges": None if eff is None else eff.tolist(),
              "window_penalty": args.window_penalty, "penalizer": args.penalizer,
              "test_rows": len(fp), "folds": rows,
              "seconds": time.perf_counter() - t0,
              "command": "python research/time_scale_check.py " + " ".join(argv or sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{result['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
