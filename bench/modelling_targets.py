"""Done-when figures of the modelling area on a simulated cohort.

Simulates a cohort (default 5,000 patients), trains the default model with
``forecast train`` and cross-validates it with ``forecast evaluate`` (5
patient-grouped folds, baselines KM and static Cox, the simulator's oracle),
then prints the figures the issue asks for and writes them to
bench/out/modelling_targets.json (the full report goes to a temporary folder,
or ``--report DIR``).

Targets, at the FIRST FORECAST POINT (each episode's response assessment,
where the service starts to forecast; the episode-start figures are printed
as a secondary table): cross-validated time-dependent AUC at 28 days within
0.03 of the oracle's; ICI at 28 and 56 days <= 0.03; better than the static
Cox model and the KM baseline (conditional on survival to the response day).

The figures move with the simulated cohort (seed): ``--seeds 2026,2027,2028``
runs one cohort per seed and prints a per-seed table of the targets.
``--schedule weekly,at-visit,sparse`` simulates each seed's cohort under each
assessment schedule (``forecast simulate --schedule``; the same latent cohort)
and reports the figures per schedule; ``--totals-only-share F`` is passed to
``forecast simulate`` too.

Usage: ``python bench/modelling_targets.py [--patients 5000] [--seed 2026 |
--seeds 2026,2027,2028] [--schedule weekly[,at-visit,sparse]]
[--totals-only-share 0] [--jobs 2] [--kind dynamic]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "modelling_targets.json"


def _forecast(*args: str) -> str:
    exe = Path(sys.executable).parent / "forecast"  # the console script of this environment
    proc = subprocess.run([str(exe), *args], check=True, capture_output=True, text=True)
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=5000)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds: one cohort, model and evaluation per seed, "
                        "then a per-seed summary (overrides --seed)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--report", type=Path, default=None, help="keep the report here")
    p.add_argument("--penalizer", default="auto", help="forecast train --penalizer")
    p.add_argument("--kind", default=None, help="forecast train --kind (default: the default)")
    p.add_argument("--out", type=Path, default=OUT, help="where to write the JSON figures")
    p.add_argument("--schedule", default="weekly",
                   help="comma-separated assessment schedules of forecast simulate "
                        "(weekly, at-visit, sparse): one run per schedule and seed")
    p.add_argument("--totals-only-share", type=float, default=0.0,
                   help="forecast simulate --totals-only-share")
    args = p.parse_args(argv)
    schedules = [x.strip() for x in args.schedule.split(",") if x.strip()]
    if args.seeds is None and len(schedules) == 1:
        args.schedule = schedules[0]
        result = run_seed(args, args.seed, args.report)
        _print(result, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    seeds = [int(x) for x in (args.seeds or str(args.seed)).split(",") if x.strip()]
    runs = []
    for seed in seeds:
        for schedule in schedules:
            args.schedule = schedule
            report = (None if args.report is None
                      else args.report / (str(seed) if len(schedules) == 1
                                          else f"{seed}-{schedule}"))
            runs.append(run_seed(args, seed, report))
            _print(runs[-1], args)
    summary = {
        "command": "python bench/modelling_targets.py "
                   f"--patients {args.patients} --seeds {','.join(map(str, seeds))} "
                   f"--schedule {','.join(schedules)} "
                   f"--totals-only-share {args.totals_only_share:g} --jobs {args.jobs} "
                   f"--folds {args.folds} --penalizer {args.penalizer}",
        "runs": runs,
    }
    print("per seed and schedule, first forecast point (AUC gap = oracle - model; ICI = the "
          "published ICI, Austin, Harrell & van Klaveren 2020; ICI..A = the Cox smoother "
          "censored at h, the ici_austin variant)")
    print("ICI56 calib. = what a perfectly calibrated model reads on the same rows and "
          "censoring (mean-95th percentile of draws; evaluation.calibrated_reference_ici)")
    print(f"{'seed':>6} {'schedule':>9} {'family':>12} {'AUC28':>6} {'oracle':>6} {'gap':>6} "
          f"{'gap 95%':>13} "
          f"{'ICI28':>6} {'ICI56':>6} {'ICI56 95%':>13} {'ICI56 calib.':>13} "
          f"{'ICI28A':>7} {'ICI56A':>7} {'ICI56A calib.':>14} {'slope28':>7} "
          f"{'slope56':>7}  targets met")
    for r in runs:
        t, c = r["targets"], r["checks"]
        met = [k for k, v in c.items() if v is True or (isinstance(v, dict) and all(v.values()))]
        print(f"{r['seed']:>6} {r['schedule']:>9} {r['family']:>12} "
              f"{_f(t.get('auc28_model')):>6} "
              f"{_f(t.get('auc28_oracle')):>6} {_f(t.get('auc28_gap_to_oracle')):>6} "
              f"{_ci(t.get('auc28_gap_to_oracle_ci95')):>13} "
              f"{_f(t.get('ici28_model')):>6} {_f(t.get('ici56_model')):>6} "
              f"{_ci(t.get('ici56_model_ci95')):>13} "
              f"{_ci(t.get('ici56_calibrated_reference')):>13} "
              f"{_f(t.get('ici28_model_austin')):>7} {_f(t.get('ici56_model_austin')):>7} "
              f"{_ci(t.get('ici56_austin_calibrated_reference')):>14} "
              f"{_f(t.get('slope28_model'), 2):>7} {_f(t.get('slope56_model'), 2):>7}  "
              f"{len(met)}/{len(c)}" + ("" if len(met) == len(c) else
                                        "  missed: " + ", ".join(k for k in c if k not in met)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def run_seed(args: argparse.Namespace, seed: int, keep_report: Path | None) -> dict:
    """Simulate, train and cross-validate one cohort; the figures of the targets."""
    with tempfile.TemporaryDirectory(prefix="modelling_targets_") as tmp:
        work = Path(tmp)
        data, models = work / "data", work / "models"
        report = keep_report or work / "report"
        t0 = time.perf_counter()
        _forecast("simulate", "--patients", str(args.patients), "--seed", str(seed),
                  "--out", str(data), "--schedule", args.schedule,
                  "--totals-only-share", str(args.totals_only_share))
        t1 = time.perf_counter()
        version = _forecast("train", str(data), "--models", str(models), "--jobs",
                            str(args.jobs), "--seed", str(seed), "--penalizer",
                            str(args.penalizer), *(("--kind", args.kind) if args.kind else ()))
        t2 = time.perf_counter()
        _forecast("evaluate", str(data), "--models", str(models), "--model", version,
                  "--out", str(report), "--folds", str(args.folds), "--jobs", str(args.jobs))
        t3 = time.perf_counter()
        metrics = json.loads((report / "metrics.json").read_text())
        family = json.loads((models / version / "bundle.json").read_text())["family"]
    cv = metrics["cv"]
    fp = cv["forecast_point"]

    def table(models: dict) -> dict:
        rows = {}
        for name in ("model", "cox", "km", "oracle"):
            if name not in models or not models[name].get("overall"):
                continue
            o = models[name]["overall"]
            bh = o["by_horizon"]
            rows[name] = {
                "n": o["n"], "events": o["events"],
                "harrell_c": o["harrell_c"], "uno_c": o["uno_c"], "ibs": o["ibs"],
                **{f"auc_{h}d": bh[str(h)]["auc"] for h in (7, 14, 28, 56, 84)},
                **{f"ici_{h}d": bh[str(h)]["ici"] for h in (7, 14, 28, 56, 84)},
                **{f"ici_floor_{h}d": bh[str(h)].get("ici_floor") for h in (7, 14, 28, 56, 84)},
                **{f"ici_pseudo_{h}d": bh[str(h)].get("ici_pseudo")
                   for h in (7, 14, 28, 56, 84)},
                **{f"citl_{h}d": bh[str(h)].get("citl") for h in (7, 14, 28, 56, 84)},
            }
        return rows

    t = metrics["targets"]
    return {
        "command": "python bench/modelling_targets.py "
                   f"--patients {args.patients} --seed {seed} --schedule {args.schedule} "
                   f"--totals-only-share {args.totals_only_share:g} --jobs {args.jobs} "
                   f"--folds {args.folds} --penalizer {args.penalizer}",
        "seed": seed,
        "schedule": args.schedule,
        "totals_only_share": args.totals_only_share,
        "version": version,
        "kind": metrics["model_kind"],
        "family": family,
        "n_patients_with_episodes": cv["n_patients"],
        "n_episodes": cv["n_episodes"],
        "n_events": cv["n_events"],
        "forecast_point": {
            "n_patients": fp["n_patients"], "n_episodes": fp["n_episodes"],
            "n_events": fp["n_events"], "response_day": fp["response_day"],
            "oracle_matched_episodes": fp.get("oracle_matched_episodes"),
            "metrics": table(fp["models"]),
            "on_oracle_episodes": table({**fp.get("on_oracle_episodes", {}),
                                         "oracle": fp["models"].get("oracle", {})}),
        },
        "episode_start": {
            "oracle_matched_episodes": cv.get("oracle_matched_episodes"),
            "metrics": table(cv["models"]),
            "on_oracle_episodes": table({**cv.get("on_oracle_episodes", {}),
                                         "oracle": cv["models"].get("oracle", {})}),
        },
        "landmark_conditional": table({"model": {"overall": cv.get("landmark_conditional")}}),
        "targets": t,
        "checks": _checks(t),
        "checks_episode_start": _checks(t.get("episode_start", {})),
        "wall_s": {"simulate": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2},
    }


def _print(result: dict, args: argparse.Namespace) -> None:
    """The tables of one seed's run."""
    print(f"seed {result['seed']}, schedule {result['schedule']}: {args.patients} simulated "
          "patients: "
          f"{result['n_patients_with_episodes']} with episodes, {result['n_episodes']} episodes, "
          f"{result['n_events']} with observed waning; "
          f"{result['forecast_point']['n_episodes']} episodes with a first forecast point "
          f"({result['forecast_point']['n_events']} events); family {result['family']}")
    for title, rows in (("first forecast point (headline), on the oracle's episodes",
                         result["forecast_point"]["on_oracle_episodes"]),
                        ("episode start (secondary), on the oracle's episodes",
                         result["episode_start"]["on_oracle_episodes"])):
        print(title)
        print(f"{'model':<7} {'HarrellC':>8} {'UnoC':>6} {'IBS':>6} {'AUC28':>6} {'ICI28':>6} "
              f"{'ICI56':>6}")
        for name, r in rows.items():
            print(f"{name:<7} {_f(r['harrell_c']):>8} {_f(r['uno_c']):>6} {_f(r['ibs'], 4):>6} "
                  f"{_f(r['auc_28d']):>6} {_f(r['ici_28d']):>6} {_f(r['ici_56d']):>6}")
    print("checks (first forecast point):", json.dumps(result["checks"]))
    t = result["targets"]
    cis = [f"{k}: {_f(t[k + '_ci95'][0])}-{_f(t[k + '_ci95'][1])}"
           for k in ("auc28_gap_to_oracle", "ici28_model", "ici56_model") if k + "_ci95" in t]
    if cis:
        print("95% intervals (patient bootstrap of the out-of-fold predictions):", "; ".join(cis))


def _ci(v: list[float] | None) -> str:
    return "-" if not v else f"{v[0]:.3f}-{v[1]:.3f}"


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _checks(t: dict) -> dict:
    gap = t.get("auc28_gap_to_oracle")
    return {
        "auc28_within_0.03_of_oracle": gap is not None and gap <= 0.03,
        "ici28_le_0.03": t.get("ici28_model") is not None and t["ici28_model"] <= 0.03,
        "ici56_le_0.03": t.get("ici56_model") is not None and t["ici56_model"] <= 0.03,
        "beats_cox": t.get("beats_cox"),
        "beats_km": t.get("beats_km"),
    }


if __name__ == "__main__":
    raise SystemExit(main())
