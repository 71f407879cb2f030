"""What ICI can measure under booster censoring: calibrated risks, both smoothers.

Draws log-logistic AFT waning times (hazard ratios that fade over time, as in
the simulated and the foreign cohorts) whose true risks are calibrated by
construction, censors them as the simulated clinics do (a share of the
episodes ends at a booster 21-35 days in, the rest at 20-300 days), and
records the waning either at its exact time or at the next assessment of a
7-day or a 28-day grid (the contract's interval, imputed at its midpoint as
the metrics do; the foreign generator assesses about monthly). For each
setting it prints the ICI at 28 and 56 days of the TRUE risks:

- with Austin's Cox smoother (`evaluation.smoothed_observed`) at the
  interval midpoints, and after each waning is placed uniformly inside its
  interval (`evaluation.untied_times`: no ties from the grid; what the
  reported `ici_austin` uses since this bench showed the midpoints' bias);
- with the pseudo-observation smoother (the reported `ici` since 2026-12-06);
- with Kaplan-Meier per decile of risk;
- and the calibrated reference of `evaluation.calibrated_reference_ici`
  for Austin's smoother (its mean over draws).

Every figure would be 0 with unlimited data and a perfect estimator; what
they read is the floor of the measurement. Means over ``--reps`` cohorts. The
cohorts come from ``tests/fixtures/calibrated_cohorts.py``, which the
evaluation tests use too.

Usage: ``python research/calibration_floor.py [--patients 6000] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fixtures.calibrated_cohorts import HORIZONS, RHO, cohort, ll_risk  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "calibration_floor.json"


def floor_of(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    from forecast import evaluation as ev

    time_, event = ev.impute_times(lower, upper)
    untied = ev.untied_times(lower, upper)[0]
    out: dict[str, float] = {}
    ref = ev.calibrated_reference_ici(lower, upper, risk, HORIZONS, reps=5, seed=1)
    for j, h in enumerate(HORIZONS):
        r = risk[:, j]
        aus = ev.smoothed_observed(time_, event, r, h)
        pse = ev.pseudo_observed(time_, event, r, h)
        dec = pd.qcut(r, 10, labels=False)
        km = np.array([ev.km_risk(time_[dec == k], event[dec == k], h) for k in range(10)])
        mean_pred = pd.Series(r).groupby(dec).mean().to_numpy()
        out[f"austin_{h}"] = float(np.mean(np.abs(r - aus)))
        # the same smoother with the waning placed uniformly inside its interval (seeded)
        # instead of at the midpoint: no ties from the assessment grid (the reported ici)
        aus_u = ev.smoothed_observed(untied, event, r, h)
        out[f"austin_untied_{h}"] = float(np.mean(np.abs(r - aus_u)))
        out[f"pseudo_{h}"] = float(np.mean(np.abs(r - pse)))
        out[f"km_decile_{h}"] = float(np.mean(np.abs(mean_pred - km)))
        out[f"reference_{h}"] = ref["by_horizon"][str(h)]["ici_austin_mean"]
    out["censored_before_56"] = float(np.mean(~event & (time_ < 56)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=6000)
    p.add_argument("--reps", type=int, default=5, help="cohorts per setting (seeds 1..reps)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for share in (0.0, 0.5, 0.7):
        for every in (0.0, 7.0, 28.0):
            runs = []
            for seed in range(1, args.reps + 1):
                lower, upper, eta = cohort(args.patients, seed, share, every)
                runs.append(floor_of(lower, upper, ll_risk(eta, RHO)))
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            rows.append({"booster_share": share, "assessed_every_days": every, **mean})
    print(f"calibrated log-logistic risks, {args.patients} episodes, mean of {args.reps} "
          "cohorts; ICI of the TRUE risks (0 = perfect measurement)")
    keys = ("austin", "austin_untied", "pseudo", "km_decile", "reference")
    print("Austin untied = Austin's smoother with each waning placed uniformly inside its "
          "interval instead of at the midpoint")
    print(f"{'boosters':>8} {'outcome':>7} {'cens<56':>7} | {'Austin':>6} {'untied':>6} "
          f"{'pseudo':>6} {'KMdec':>6} {'ref':>6} (28 d) | {'Austin':>6} {'untied':>6} "
          f"{'pseudo':>6} {'KMdec':>6} {'ref':>6} (56 d)")
    for r in rows:
        every = r["assessed_every_days"]
        print(f"{r['booster_share']:>8.1f} {f'{every:.0f}-day' if every else 'exact':>7} "
              f"{r['censored_before_56']:>7.2f} | "
              + " ".join(f"{r[f'{k}_28']:>6.3f}" for k in keys) + "        | "
              + " ".join(f"{r[f'{k}_56']:>6.3f}" for k in keys))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"command": "python research/calibration_floor.py "
                               f"--patients {args.patients} --reps {args.reps}",
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
