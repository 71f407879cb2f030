"""Serving bundle vs lifelines' predict_survival_function on the same fitted model.

Fits a dynamic model (``--kind``: ``dynamic``, ``landmark`` or
``piecewise``) on a simulated cohort once per AFT family
(the family the default picks depends on the data, and lifelines' own cost
differs by family: its log-normal survival is several times slower than its
log-logistic one; ``piecewise`` has one family, its lifelines counterpart is
``PiecewiseExponentialRegressionFitter`` carrying the fitted parameters),
then times, in the same run, survival predictions at the contract horizons
for 1 and for 10,000 patients:

- model only: ``Bundle.predict_survival_design(z, horizons)`` on the encoded
  design array vs lifelines' ``fitter.predict_survival_function(design,
  times=horizons)`` on the same encoded design (as a DataFrame, which lifelines
  needs);
- end to end: ``Bundle.predict_survival(features_frame, horizons)`` (our
  encoding included) vs ``estimator.predict_survival(features_frame,
  horizons)`` (the same encoding, then lifelines).

For the ``dynamic`` kind the risk needs S(start + h) / S(entry) with
per-row times (``piecewise``: S(start - entry + h) on its own clock).
lifelines' ``predict_survival_function`` takes one vector of times for all
rows, so its model-only reference is ONE call on the union of the times the
rows need (every distinct ``start + h`` and ``entry``), from
which each row's values are gathered; the end-to-end reference is the
estimator's own lifelines path (one call per distinct ``start - entry``,
with ``conditional_after``). Both give the bundle's numbers (max difference
printed).

The end-to-end lifelines path shares our encoder, so every speed-up of the
encoding also speeds up that reference: the end-to-end ratio is bounded by
(encoding + lifelines) / (encoding + bundle).

Each timing is the best of several calls (perf_counter; at least 5, more
until 0.5 s is spent on that timing). Prints a table and
writes bench/out/bundle.json. Usage: ``python bench/bundle_vs_lifelines.py
[--patients 2000] [--seed 7] [--families weibull,lognormal,loglogistic]
[--kind dynamic|landmark|piecewise]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "bundle.json"
TARGET = 100.0


def best_of(fn, repeats: int, budget_s: float = 0.5) -> float:
    """Fastest wall time of at least ``repeats`` calls (seconds).

    Calls go on, up to 5,000, until ``budget_s`` seconds have been spent, as
    ``timeit``'s autorange does: a 0.3 ms call gets as many chances at a quiet
    moment of the machine as a 30 ms one gets in a few calls.
    """
    best, spent, calls = np.inf, 0.0, 0
    while calls < repeats or (spent < budget_s and calls < 5000):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return float(best)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=2000, help="simulated training patients")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--families", default="weibull,lognormal,loglogistic",
                   help="comma-separated AFT families of the model to time")
    p.add_argument("--kind", choices=("dynamic", "landmark", "piecewise"), default=None,
                   help="model kind (default: the default kind)")
    args = p.parse_args(argv)
    from forecast.models import DEFAULT_KIND

    args.kind = args.kind or DEFAULT_KIND
    if args.kind == "piecewise":
        args.families = "piecewise"

    from forecast.bundle import clock_arrays
    from forecast.contract import HORIZONS
    from forecast.simulation import simulate
    from forecast.training import fit_kind, training_data

    cohort = simulate(args.patients, args.seed).cohort
    data = training_data(cohort, args.kind)
    times = np.asarray(HORIZONS, dtype=float)
    rows = []
    models = {}
    for family in args.families.split(","):
        t0 = time.perf_counter()
        params = {} if family == "piecewise" else {"distribution": family}
        est = fit_kind(data, args.kind, n_bootstrap=0, random_state=args.seed, **params)
        fit_s = time.perf_counter() - t0
        bundle = est.to_bundle()
        models[family] = {"design_columns": int(bundle.encoder.active.sum()),
                          "fit_s": round(fit_s, 2)}
        rng = np.random.default_rng(args.seed)
        for n in (1, 10_000):
            X = data.X.iloc[rng.integers(0, len(data.X), size=n)].reset_index(drop=True)
            # what lifelines needs: encoded active columns, named, plus the ancillary covariates
            if family == "piecewise":  # a fitter carrying our parameters, made once
                design, anc, fitter = est.lifelines_input(X), None, est.lifelines_fitter()
                sf_kw = {}
            else:
                (design, anc), fitter = est.lifelines_input(X), est.fitter_
                sf_kw = {"ancillary": anc}
            z = bundle.design(X)
            clock = clock_arrays(X) if bundle.time_origin == "as_of" else None
            ours = bundle.predict_survival(X, times)

            def lifelines_model(d=design, f=fitter, kw=sf_kw, clock=clock,
                                pw=family == "piecewise"):
                if clock is None:
                    return f.predict_survival_function(d, times=times, **kw).to_numpy().T
                start, entry = clock
                origin = entry if pw else 0.0  # the piecewise clock starts at the entry
                need = (start - origin)[:, None] + times[None, :]
                grid, inv = np.unique(np.concatenate([need.ravel(), entry - origin]),
                                      return_inverse=True)
                sf = f.predict_survival_function(d, times=grid, **kw).to_numpy()
                k = need.size
                rows_ = np.arange(len(start))
                s_need = sf[inv[:k].reshape(need.shape), rows_[:, None]]
                return s_need / sf[inv[k:], rows_][:, None]

            theirs = lifelines_model()
            max_diff = float(np.abs(ours - theirs).max())
            repeats = 300 if n == 1 else 15
            if n > 1 and clock is not None:
                repeats = 5  # the union-grid call takes seconds
            t_model = best_of(
                lambda z=z, b=bundle, c=clock: b.predict_survival_design(z, times, clock=c),
                repeats)
            t_lif = best_of(lifelines_model, repeats)
            t_e2e = best_of(lambda X=X, b=bundle: b.predict_survival(X, times), repeats)
            t_enc = best_of(lambda X=X, b=bundle: b.design(X), repeats)
            t_lif_e2e = best_of(lambda X=X, e=est: e.predict_survival(X, times), repeats)
            rows.append({
                "family": family,
                "patients": n,
                "bundle_model_s": t_model,
                "lifelines_model_s": t_lif,
                "speedup_model": t_lif / t_model,
                "bundle_encoding_s": t_enc,
                "bundle_end_to_end_s": t_e2e,
                "lifelines_end_to_end_s": t_lif_e2e,
                "speedup_end_to_end": t_lif_e2e / t_e2e,
                "max_abs_diff": max_diff,
                "meets_target_model": bool(t_lif / t_model >= TARGET),
                "meets_target_end_to_end": bool(t_lif_e2e / t_e2e >= TARGET),
            })
    result = {
        "models": models,
        "training_rows": len(data.X),
        "target_speedup": TARGET,
        "rows": rows,
        "python": platform.python_version(),
        "command": "python bench/bundle_vs_lifelines.py "
                   f"--patients {args.patients} --seed {args.seed} --families {args.families} "
                   f"--kind {args.kind}",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.kind} model fitted on {len(data.X)} landmark rows, "
          + ", ".join(f"{f}: {m['design_columns']} design columns" for f, m in models.items()))
    print(f"{'family':>11} {'patients':>9} {'path':>11} {'bundle ms':>10} {'lifelines ms':>13} "
          f"{'speedup':>8}")
    for r in rows:
        for path, key in (("model", "model"), ("end-to-end", "end_to_end")):
            tb, tl = r[f"bundle_{key}_s"], r[f"lifelines_{key}_s"]
            print(f"{r['family']:>11} {r['patients']:>9} {path:>11} {1e3 * tb:>10.3f} "
                  f"{1e3 * tl:>13.3f} {tl / tb:>7.0f}x")
        print(f"{'':>11} {'':>9} {'(encoding)':>11} {1e3 * r['bundle_encoding_s']:>10.3f}")
    print(f"max |bundle - lifelines| = {max(r['max_abs_diff'] for r in rows):.1e}")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
