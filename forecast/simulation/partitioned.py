"""A simulated cohort written straight to a partitioned dataset, one part at a time.

For registry-scale runs (a million patients): each part is simulated, written
(``patients/``, ``sessions/``, ``assessments/`` and ``truth/`` parts, see
:mod:`forecast.data.partitioned`) and dropped before the next, so memory
stays that of one part. Part ``k`` is :func:`forecast.simulation.simulate` of
its patients with a seed derived from ``(seed, k)``; its patient ids are
renumbered to the cohort's (``S`` + the patient's number, zero-padded to the
cohort's width), so the ids sort in part order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.data.partitioned import PART_NAME, is_partitioned, write_part
from forecast.simulation.generator import simulate
from forecast.simulation.output import write_truth


def part_seed(seed: int, part: int) -> int:
    """The simulator seed of part ``part`` of a partitioned simulation with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(part)]).generate_state(1)[0])


def _renumber(ids: pd.Series, offset: int, width: int) -> np.ndarray:
    """Local ids ``S0001..`` of a part -> the cohort's ids ``S<offset + k>`` (``width`` digits)."""
    number = pd.to_numeric(ids.astype(str).str[1:]).to_numpy(dtype=np.int64) + offset
    return np.char.add("S", np.char.zfill(number.astype(str), width)).astype(object)


def _renumbered(frame: pd.DataFrame, offset: int, width: int) -> pd.DataFrame:
    out = frame.copy()
    out["patient_id"] = _renumber(out["patient_id"], offset, width)
    if "episode_id" in out:
        parts = out["episode_id"].astype(str).str.split("#", n=1, expand=True)
        out["episode_id"] = _renumber(parts[0], offset, width) + "#" + parts[1].to_numpy(object)
    return out


def simulate_partitioned(
    n_patients: int,
    seed: int,
    patients_per_part: int,
    out: Path | str,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> dict[str, int]:
    """Simulate ``n_patients`` into the partitioned dataset ``out``; return row counts.

    ``options`` go to :func:`forecast.simulation.simulate` (``end_date``,
    ``schedule``, ``totals_only_share``, ``params``). ``progress`` is called
    with (parts written, parts) after each part. The same arguments give
    identical files; a different ``patients_per_part`` gives another
    (equally valid) cohort.
    """
    if n_patients < 1 or patients_per_part < 1:
        raise ValueError("n_patients and patients_per_part must be at least 1")
    root = Path(out)
    if is_partitioned(root) and any((root / "patients").iterdir()):
        raise ValueError(f"{root} already holds a partitioned dataset; choose an empty folder")
    width = max(4, len(str(n_patients)))
    n_parts = -(-n_patients // patients_per_part)
    counts = {"patients": 0, "sessions": 0, "assessments": 0, "truth": 0, "parts": n_parts}
    (root / "truth").mkdir(parents=True, exist_ok=True)
    for k in range(n_parts):
        offset = k * patients_per_part
        n = min(patients_per_part, n_patients - offset)
        result = simulate(n, part_seed(seed, k), **options)
        c = result.cohort
        cohort = Cohort(*(_renumbered(getattr(c, t), offset, width)
                          for t in ("patients", "sessions", "assessments")), c.covariates)
        write_part(cohort, root, k)
        write_truth(_renumbered(result.truth, offset, width),
                    root / "truth" / PART_NAME.format(k).replace(".parquet", ".csv"))
        for t in ("patients", "sessions", "assessments"):
            counts[t] += len(getattr(cohort, t))
        counts["truth"] += len(result.truth)
        if progress is not None:
            progress(k + 1, n_parts)
    return counts
