"""Done-when figures of the modelling area on a simulated cohort.

Simulates a cohort (default 5,000 patients), trains the default model with
``forecast train`` and cross-validates it with ``forecast evaluate`` (5
patient-grouped folds, baselines KM and static Cox, the simulator's oracle),
then prints the figures the issue asks for and writes them to
bench/out/modelling_targets.json (the full report goes to a temporary folder,
or ``--report DIR``).

Targets: cross-validated time-dependent AUC at 28 days within 0.03 of the
oracle's; ICI at 28 and 56 days <= 0.03; better than the static Cox model and
the KM baseline.

Usage: ``python bench/modelling_targets.py [--patients 5000] [--seed 2026] [--jobs 2]``.
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
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--report", type=Path, default=None, help="keep the report here")
    p.add_argument("--penalizer", default="auto", help="forecast train --penalizer")
    p.add_argument("--out", type=Path, default=OUT, help="where to write the JSON figures")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelling_targets_") as tmp:
        work = Path(tmp)
        data, models = work / "data", work / "models"
        report = args.report or work / "report"
        t0 = time.perf_counter()
        _forecast("simulate", "--patients", str(args.patients), "--seed", str(args.seed),
                  "--out", str(data))
        t1 = time.perf_counter()
        version = _forecast("train", str(data), "--models", str(models), "--jobs",
                            str(args.jobs), "--seed", str(args.seed), "--penalizer",
                            str(args.penalizer))
        t2 = time.perf_counter()
        _forecast("evaluate", str(data), "--models", str(models), "--model", version,
                  "--out", str(report), "--folds", str(args.folds), "--jobs", str(args.jobs))
        t3 = time.perf_counter()
        metrics = json.loads((report / "metrics.json").read_text())
        family = json.loads((models / version / "bundle.json").read_text())["family"]
    cv = metrics["cv"]
    models_cv = cv["models"]
    rows = {}
    for name in ("model", "cox", "km", "oracle"):
        if name not in models_cv:
            continue
        o = models_cv[name]["overall"]
        rows[name] = {
            "harrell_c": o["harrell_c"], "uno_c": o["uno_c"], "ibs": o["ibs"],
            **{f"auc_{h}d": o["by_horizon"][str(h)]["auc"] for h in (7, 14, 28, 56, 84)},
            **{f"ici_{h}d": o["by_horizon"][str(h)]["ici"] for h in (7, 14, 28, 56, 84)},
            **{f"citl_{h}d": o["by_horizon"][str(h)].get("citl") for h in (7, 14, 28, 56, 84)},
        }
    t = metrics["targets"]
    result = {
        "command": "python bench/modelling_targets.py "
                   f"--patients {args.patients} --seed {args.seed} --jobs {args.jobs} "
                   f"--folds {args.folds} --penalizer {args.penalizer}",
        "version": version,
        "kind": metrics["model_kind"],
        "family": family,
        "n_patients_with_episodes": cv["n_patients"],
        "n_episodes": cv["n_episodes"],
        "n_events": cv["n_events"],
        "oracle_matched_episodes": cv.get("oracle_matched_episodes"),
        "metrics": rows,
        "targets": t,
        "checks": {
            "auc28_within_0.03_of_oracle": (t.get("auc28_gap_to_oracle") is not None
                                            and t["auc28_gap_to_oracle"] <= 0.03),
            "ici28_le_0.03": t["ici28_model"] is not None and t["ici28_model"] <= 0.03,
            "ici56_le_0.03": t["ici56_model"] is not None and t["ici56_model"] <= 0.03,
            "beats_cox": t.get("beats_cox"),
            "beats_km": t.get("beats_km"),
        },
        "wall_s": {"simulate": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.patients} simulated patients: {cv['n_patients']} with episodes, "
          f"{cv['n_episodes']} episodes, {cv['n_events']} with observed waning")
    print(f"{'model':<7} {'HarrellC':>8} {'UnoC':>6} {'IBS':>6} {'AUC28':>6} {'ICI28':>6} "
          f"{'ICI56':>6}")
    for name, r in rows.items():
        print(f"{name:<7} {r['harrell_c']:>8.3f} {r['uno_c'] or float('nan'):>6.3f} "
              f"{r['ibs'] or float('nan'):>6.4f} {r['auc_28d'] or float('nan'):>6.3f} "
              f"{r['ici_28d'] or float('nan'):>6.3f} {r['ici_56d'] or float('nan'):>6.3f}")
    print("checks:", json.dumps(result["checks"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
