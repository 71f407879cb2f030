"""Time ``forecast validate`` on a synthetic contract folder of N assessment rows.

Usage: ``python bench/data_validate.py --rows 1000000 --out /tmp/kap-bench``
(prints the seconds taken by read + validation + canonical frames).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.cohort import Cohort, canonicalize
from forecast.data import load_cohort, write_cohort


def synthetic(rows: int, seed: int = 0) -> Cohort:
    """A contract-conforming cohort with ``rows`` assessments (~30 per patient)."""
    rng = np.random.default_rng(seed)
    n_pat = max(1, -(-rows // 30))
    ids = np.char.add("p", np.arange(n_pat).astype(str))
    patients = canonicalize(
        "patients",
        pd.DataFrame(
            {
                "patient_id": ids,
                "age": rng.integers(18, 80, n_pat).astype(float),
                "sex": rng.choice(["female", "male"], n_pat),
            }
        ),
    )
    # 30 distinct dates per patient, so (patient_id, date) is unique.
    pid = np.repeat(ids, 30)[:rows]
    day = np.tile(np.arange(30) * 7, n_pat)[:rows]
    items = rng.integers(0, 4, (rows, 9)).astype(float)
    items[rng.random((rows, 9)) < 0.02] = np.nan
    answered = (~np.isnan(items)).sum(1)
    items[answered < 7] = np.nan
    total = np.where(answered == 9, np.nansum(items, 1), np.nan)
    assessments = canonicalize(
        "assessments",
        pd.DataFrame(
            {
                "patient_id": pid,
                "date": np.datetime64("2020-01-01") + day.astype("timedelta64[D]"),
                **{f"phq9_{i + 1}": items[:, i] for i in range(9)},
                "phq9_total": np.where(np.isnan(items).all(1), 12.0, total),
                "cssrs_ideation": rng.integers(0, 3, rows).astype(float),
            }
        ),
    )
    sessions = canonicalize(
        "sessions",
        pd.DataFrame(
            {
                "patient_id": ids,
                "date": np.full(n_pat, np.datetime64("2020-01-01")),
                "kind": "induction",
                "psychotherapy": 1.0,
            }
        ),
    )
    return Cohort(patients, sessions, assessments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="assessment rows")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kap-bench"), help="folder")
    parser.add_argument("--fmt", default="csv", choices=["csv", "parquet"], help="file format")
    args = parser.parse_args()
    write_cohort(synthetic(args.rows), args.out, args.fmt)
    start, cpu = time.perf_counter(), time.process_time()
    cohort = load_cohort(args.out)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU time is reported too: on a shared machine wall time includes waiting.
    print(
        f"{len(cohort.assessments)} assessment rows ({args.fmt}) validated in {took:.1f} s "
        f"wall, {cpu:.1f} s CPU"
    )
    # Reference on the same machine and moment: reading the file alone.
    start = time.perf_counter()
    if args.fmt == "csv":
        pd.read_csv(args.out / "assessments.csv", dtype=str, keep_default_na=False)
    else:
        pd.read_parquet(args.out / "assessments.parquet")
    print(
        f"reference: pandas reads assessments.{args.fmt} alone in "
        f"{time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
