"""The simulator's true risks (truth.csv) matched to evaluation rows: the oracle model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from forecast.contract import HORIZONS
from forecast.simulation import SimulationParams, true_risk, truth_location


def _truth_rows(rows: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Index into ``truth`` of each row's episode (matched on patient and start date), -1 if none.

    ``rows`` needs ``patient_id`` and ``episode_start`` (or ``as_of`` for
    landmark-0 rows, where it is the start).
    """
    t = pd.DataFrame({"patient_id": truth["patient_id"].astype(str).to_numpy(),
                      "_key_date": pd.to_datetime(truth["episode_start"]).dt.normalize()
                      .to_numpy(),
                      "_truth_row": np.arange(len(truth))})
    t = t.drop_duplicates(["patient_id", "_key_date"])
    start = rows["episode_start"] if "episode_start" in rows.columns else rows["as_of"]
    q = pd.DataFrame({"patient_id": rows["patient_id"].astype(str).to_numpy(),
                      "_key_date": pd.to_datetime(start).dt.normalize().to_numpy()})
    merged = q.merge(t, how="left", on=["patient_id", "_key_date"])
    return merged["_truth_row"].fillna(-1).to_numpy(dtype=int)


def oracle_risks(start_rows: pd.DataFrame, truth: pd.DataFrame,
                 horizons: Sequence[int] = HORIZONS) -> np.ndarray:
    """Oracle risk per episode-start row from truth.csv (NaN rows where no truth matches)."""
    idx = _truth_rows(start_rows.drop(columns=["episode_start"], errors="ignore"), truth)
    cols = [f"risk_{h}d" for h in horizons]
    vals = truth[cols].to_numpy(dtype=float)
    out = np.full((len(idx), len(cols)), np.nan)
    out[idx >= 0] = vals[idx[idx >= 0]]
    return out


def truth_scale(truth: pd.DataFrame) -> float:
    """The log-logistic scale of the simulator run that wrote ``truth``.

    Read from the file itself: with ``logit(risk_h) = (log h - location) /
    scale`` two horizons give ``scale = log(28 / 7) / (logit r28 - logit
    r7)`` (median over the rows; the risks are rounded to 6 decimals). Falls
    back to the simulator's default when the file has too few usable rows.
    """
    if {"risk_7d", "risk_28d"} <= set(truth.columns):
        r7 = truth["risk_7d"].to_numpy(dtype=float)
        r28 = truth["risk_28d"].to_numpy(dtype=float)
        ok = (r7 > 1e-3) & (r7 < 0.999) & (r28 > 1e-3) & (r28 < 0.999) & (r28 > r7)
        if ok.sum() >= 10:
            with np.errstate(divide="ignore"):
                d = np.log(r28[ok] / (1 - r28[ok])) - np.log(r7[ok] / (1 - r7[ok]))
            return float(np.median(np.log(4.0) / d))
    return float(SimulationParams().wane_scale)


def oracle_conditional_risks(rows: pd.DataFrame, truth: pd.DataFrame,
                             horizons: Sequence[int] = HORIZONS) -> np.ndarray:
    """Oracle risk within h days after as-of, given survival to ``s = rows["landmark"]``.

    ``P(T <= s + h | T > s)`` from the episode's true location (recovered
    from truth.csv by :func:`forecast.simulation.truth_location`) and
    :func:`forecast.simulation.true_risk`; NaN rows where no truth matches.
    """
    idx = _truth_rows(rows, truth)
    out = np.full((len(rows), len(horizons)), np.nan)
    m = idx >= 0
    if m.any():
        scale = truth_scale(truth)
        loc = truth_location(truth.iloc[idx[m]].reset_index(drop=True), scale)
        out[m] = true_risk(loc, scale, tuple(int(h) for h in horizons),
                           since=rows["landmark"].to_numpy(float)[m])
    return out
