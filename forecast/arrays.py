"""Vectorised helpers on rows grouped by patient (sorted integer keys, no Python loops).

Rows of a table are sorted by patient code and day; a query asks for the last
row at or before a day of the same patient. Index ``-1`` means "no row" and
becomes a fill value.
"""

from __future__ import annotations

import numpy as np


def last_at_or_before(
    keys: np.ndarray, pcs: np.ndarray, q_key: np.ndarray, q_pc: np.ndarray
) -> np.ndarray:
    """Index of the last row with key <= query key of the same patient, else -1."""
    if len(keys) == 0:
        return np.full(len(q_key), -1, dtype=np.int64)
    i = np.searchsorted(keys, q_key, side="right") - 1
    ok = i >= 0
    ok[ok] = pcs[i[ok]] == q_pc[ok]
    return np.where(ok, i, -1)


def take(values: np.ndarray, idx: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """``values[idx]`` with ``fill`` where ``idx`` is -1 (float result)."""
    if len(values) == 0:
        return np.full(len(idx), fill)
    out = np.asarray(values, dtype=float)[np.clip(idx, 0, None)]
    return np.where(idx >= 0, out, fill)


def take_objects(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values[idx]`` with None where ``idx`` is -1 (object result)."""
    out = np.full(len(idx), None, dtype=object)
    ok = idx >= 0
    if ok.any():
        out[ok] = np.asarray(values, dtype=object)[idx[ok]]
    return out


def group_cumsum(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``x`` within runs of equal sorted ``group``."""
    if len(x) == 0:
        return np.zeros(0)
    cs = np.cumsum(x, dtype=float)
    start = np.r_[True, group[1:] != group[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(x)), 0))
    return cs - (cs[first] - x[first])


def run_cummax(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running maximum of non-negative-or--1 int ``values`` within runs of equal ``group``.

    Each run is lifted above all earlier runs so that one global
    ``np.maximum.accumulate`` never carries a value across a run boundary.
    """
    values = np.asarray(values, dtype=np.int64)
    start = np.r_[True, group[1:] != group[:-1]]
    run = np.cumsum(start) - 1
    span = int(values.max()) + 2 if len(values) else 2
    lifted = run * span + (values + 1)
    return np.maximum.accumulate(lifted) - run * span - 1


def episode_ids(ids: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``"<patient_id>#<k>"`` for aligned arrays (object result)."""
    if len(ids) == 0:
        return np.zeros(0, dtype=object)
    text = np.char.add(np.char.add(np.asarray(ids, dtype=str), "#"), np.asarray(k).astype(str))
    return text.astype(object)


def range_sum(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sums of rows ``lo..hi`` (inclusive) from the cumulative sums ``cum``; 0 if hi < lo."""
    if len(cum) == 0:
        return np.zeros(len(lo))
    upper_sum = np.where(hi >= 0, cum[np.clip(hi, 0, len(cum) - 1)], 0.0)
    lower_sum = np.where(lo > 0, cum[np.clip(lo - 1, 0, len(cum) - 1)], 0.0)
    return np.where(hi >= lo, upper_sum - lower_sum, 0.0)


def fill_missing(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value with NaN -> 0, 0/1 missing indicator)."""
    miss = np.isnan(values)
    return np.where(miss, 0.0, values), miss.astype(float)
