"""Time outcomes, episodes and the landmark training set on a simulated cohort.

Usage::

    python bench/episodes_scale.py --patients 120000   # about 1.04 million assessments
    python bench/episodes_scale.py --patients 100000 --json bench/out/episodes.json

Prints one line per stage: wall seconds, and with ``--memory`` the peak of the
memory newly allocated by the stage (a second run under ``tracemalloc``, which
sees numpy and pandas buffers; times come from the first, untraced run).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import pandas as pd

from forecast.episodes import build_episodes
from forecast.features import features_at, landmark_dataset
from forecast.simulation import simulate
from forecast.summary import patient_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=120_000, help="simulated patients")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per stage")
    args = parser.parse_args()

    t0 = time.perf_counter()
    cohort = simulate(args.patients, args.seed).cohort
    sizes = {
        "patients": len(cohort.patients),
        "sessions": len(cohort.sessions),
        "assessments": len(cohort.assessments),
    }
    print(f"simulate: {time.perf_counter() - t0:.1f} s; {sizes}")
    queries = pd.DataFrame(
        {"patient_id": cohort.patients["patient_id"], "as_of": cohort.assessments["date"].max()}
    )
    stages = {
        "build_episodes": lambda: build_episodes(cohort),
        "patient_summary": lambda: patient_summary(cohort),
        "landmark_dataset": lambda: landmark_dataset(cohort),
        "features_at (one query per patient)": lambda: features_at(cohort, queries),
    }
    figures: dict[str, object] = {"sizes": sizes, "stages": {}}
    for name, run in stages.items():
        t = time.perf_counter()
        rows = len(run())
        seconds = time.perf_counter() - t
        line = f"{name}: {seconds:.2f} s, {rows} rows"
        figures["stages"][name] = {"seconds": round(seconds, 3), "rows": rows}
        if args.memory:
            tracemalloc.start()
            run()
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            line += f", peak memory {peak:.0f} MiB"
            figures["stages"][name]["peak_mib"] = round(peak)
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
