"""Training pipeline at scale: wall time and peak memory per stage (10k and 100k patients).

Each stage runs in its own child process (so its peak RSS is its own) and
hands its result to the next through files in a work folder:

1. ``load``      - ``forecast.data.load_cohort`` of the simulated CSV folder (validation included)
2. ``episodes``  - ``forecast.episodes.build_episodes``
3. ``features``  - ``forecast.features.landmark_dataset`` (the stacked training set)
4. ``fit``       - the default model (``DEFAULT_KIND``, or ``--kind``) with ``--bootstrap``
                   patient-level refits (``--jobs`` in parallel) and
                   ``registry.save_version``, as ``forecast train``
5. ``evaluate``  - the saved version applied to the same cohort
                   (``forecast.evaluation.evaluate_bundle``: episode-start and
                   landmark-conditional metrics)

The training time is load + episodes + features + fit (what ``forecast train``
does). Simulating the cohort is not timed. Peak memory is the child's
``ru_maxrss``. Writes bench/out/train_scale.json and prints a table.

Usage::

    python bench/train_scale.py             # 10k and 100k patients
    python bench/train_scale.py --quick     # 10k only
    python bench/train_scale.py --patients 100000 --bootstrap 30 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "train_scale.json"
STAGES = ("load", "episodes", "features", "fit", "evaluate")
TRAIN_STAGES = ("load", "episodes", "features", "fit")
TARGET_TRAIN_S = 180.0
TARGET_PEAK_MB = 6144.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_stage(stage: str, work: Path, bootstrap: int, jobs: int, seed: int,
              kind: str | None = None) -> dict:
    """Run one stage in this process; return its timing (inputs read before the clock)."""
    import pandas as pd

    from forecast.cohort import Cohort

    def read_cohort() -> Cohort:
        frames = {t: pd.read_parquet(work / f"{t}.parquet")
                  for t in ("patients", "sessions", "assessments")}
        return Cohort(frames["patients"], frames["sessions"], frames["assessments"])

    info: dict = {"stage": stage}
    if stage == "load":
        from forecast.data import load_cohort

        t0 = time.perf_counter()
        cohort = load_cohort(work / "csv")
        info["wall_s"] = time.perf_counter() - t0
        for t in ("patients", "sessions", "assessments"):
            getattr(cohort, t).to_parquet(work / f"{t}.parquet")
        info["rows"] = {t: len(getattr(cohort, t)) for t in ("patients", "sessions",
                                                              "assessments")}
    elif stage == "episodes":
        from forecast.episodes import build_episodes

        cohort = read_cohort()
        t0 = time.perf_counter()
        ep = build_episodes(cohort)
        info["wall_s"] = time.perf_counter() - t0
        info["rows"] = {"episodes": len(ep)}
    elif stage == "features":
        from forecast.features import landmark_dataset

        cohort = read_cohort()
        t0 = time.perf_counter()
        ld = landmark_dataset(cohort)
        info["wall_s"] = time.perf_counter() - t0
        ld.to_parquet(work / "landmarks.parquet")
        info["rows"] = {"landmark_rows": len(ld), "columns": ld.shape[1]}
    elif stage == "fit":
        from forecast import registry
        from forecast.training import fit_kind, population_curve, training_data

        kind = kind or _default_kind()
        cohort = read_cohort()
        ld = pd.read_parquet(work / "landmarks.parquet")
        t0 = time.perf_counter()
        data = training_data(cohort, kind, landmarks=ld)
        est = fit_kind(data, kind, n_bootstrap=bootstrap, random_state=seed, n_jobs=jobs)
        t_fit = time.perf_counter() - t0
        start = ld[ld["landmark"] == 0]
        version = registry.save_version(
            est.to_bundle(), models_dir=work / "models",
            fingerprint=registry.fingerprint_cohort(cohort), training=data.summary,
            card={"population_curve": population_curve(start["lower"].to_numpy(float),
                                                       start["upper"].to_numpy(float))},
        )
        info["wall_s"] = time.perf_counter() - t0
        info["fit_only_s"] = t_fit
        info["family"] = est.family_
        info["bootstrap"] = bootstrap
        (work / "version.txt").write_text(version)
    elif stage == "evaluate":
        from forecast import registry
        from forecast.evaluation import evaluate_bundle

        cohort = read_cohort()
        model = registry.load((work / "version.txt").read_text(), work / "models")
        t0 = time.perf_counter()
        res = evaluate_bundle(cohort, model.bundle, definition=model.definition)
        info["wall_s"] = time.perf_counter() - t0
        o = res["models"]["model"]["overall"]
        info["apparent_auc28"] = o["by_horizon"]["28"]["auc"]
        info["apparent_ici28"] = o["by_horizon"]["28"]["ici"]
    else:
        raise ValueError(stage)
    info["peak_rss_mb"] = _peak_mb()
    return info


def run_size(n: int, seed: int, bootstrap: int, jobs: int, kind: str | None = None) -> dict:
    """Simulate ``n`` patients, then run every stage in a child process."""
    with tempfile.TemporaryDirectory(prefix=f"train_scale_{n}_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        _simulate(n, seed, work / "csv")
        sim_s = time.perf_counter() - t0
        stages = []
        for stage in STAGES:
            proc = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--work", str(work),
                 "--bootstrap", str(bootstrap), "--jobs", str(jobs), "--seed", str(seed),
                 *(["--kind", kind] if kind else [])],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                stages.append({"stage": stage, "error": proc.stderr[-2000:]})
                break
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            stages.append(info)
            print(f"  {n:>7} {stage:<9} {info['wall_s']:>8.1f} s {info['peak_rss_mb']:>9.0f} MB",
                  flush=True)
    ok = all("error" not in s for s in stages)
    train_s = sum(s.get("wall_s", 0.0) for s in stages if s["stage"] in TRAIN_STAGES)
    peak = max((s.get("peak_rss_mb", 0.0) for s in stages), default=0.0)
    return {
        "patients": n,
        "simulate_s": sim_s,
        "stages": stages,
        "train_s": train_s,
        "peak_rss_mb": peak,
        "ok": ok,
        "meets_time": bool(ok and train_s <= TARGET_TRAIN_S) if n >= 100_000 else None,
        "meets_memory": bool(ok and peak <= TARGET_PEAK_MB),
    }


def _simulate(n: int, seed: int, out: Path) -> None:
    from forecast.simulation import simulate, write_simulation

    write_simulation(simulate(n, seed), out)


def _default_kind() -> str:
    from forecast.models import DEFAULT_KIND

    return DEFAULT_KIND


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k patients only")
    p.add_argument("--patients", type=int, nargs="*", default=None,
                   help="cohort sizes (default 10000 100000)")
    p.add_argument("--bootstrap", type=int, default=30, help="bootstrap refits (train default)")
    p.add_argument("--jobs", type=int, default=2, help="parallel bootstrap refits")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--kind", default=None, help="model kind (default: the default kind)")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args.bootstrap, args.jobs, args.seed,
                                   args.kind)))
        return 0
    sizes = args.patients or ([10_000] if args.quick else [10_000, 100_000])
    print(f"{'patients':>9} {'stage':<9} {'wall':>10} {'peak RSS':>12}")
    runs = [run_size(n, args.seed, args.bootstrap, args.jobs, args.kind) for n in sizes]
    for r in runs:
        print(f"{r['patients']:>9} training (load+episodes+features+fit) {r['train_s']:.1f} s, "
              f"peak {r['peak_rss_mb']:.0f} MB" + ("" if r["ok"] else "  FAILED"))
    result = {
        "targets": {"train_s_100k": TARGET_TRAIN_S, "peak_rss_mb": TARGET_PEAK_MB},
        "settings": {"bootstrap": args.bootstrap, "jobs": args.jobs, "seed": args.seed,
                     "kind": args.kind or _default_kind()},
        "runs": runs,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "command": "python bench/train_scale.py" + (" --quick" if args.quick else "")
                   + (" --patients " + " ".join(map(str, args.patients)) if args.patients else "")
                   + f" --bootstrap {args.bootstrap} --jobs {args.jobs} --seed {args.seed}"
                   + (f" --kind {args.kind}" if args.kind else ""),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
