"""The ``forecast predict`` table straight from the forecast frame (no answers built).

:func:`forecast.policy.forecast_rows` flattens JSON answers into the predict
contract's columns; for a whole clinic, building the answers (texts, drivers,
safety blocks) is most of the time. :func:`frame_table` reads the same values
from the :class:`~forecast.policy.risk.ForecastFrame` the answers are built
from: the statuses, the daily risk curve, the suggestion offsets and the
safety level are the frame's, so the rules are not repeated here; only the
formatting of the answer (rounding to 4 decimals, whole days, ISO dates) is,
and a test checks the two tables are equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecast.contract import HORIZONS, PREDICT_COLUMNS
from forecast.policy.risk import ForecastFrame, median_days
from forecast.policy.settings import FORECAST_STATUSES, PolicySettings


def _iso(days: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` of datetime64 values where ``keep``, else None."""
    out = np.full(len(days), None, dtype=object)
    if keep.any():
        text = np.datetime_as_string(days[keep].astype("datetime64[D]"), unit="D")
        out[keep] = text.astype(object)
    return out


def _whole(values: np.ndarray, keep: np.ndarray) -> pd.Series:
    """Whole numbers (Int64) where ``keep`` and finite, else missing (as ``whole`` gives)."""
    v = np.asarray(values, dtype=float)
    ok = keep & np.isfinite(v)
    out = pd.array(np.zeros(len(v), dtype=np.int64), dtype="Int64")
    out[ok] = np.trunc(v[ok]).astype(np.int64)
    out[~ok] = pd.NA
    return pd.Series(out)


def frame_table(frame: ForecastFrame, settings: PolicySettings) -> pd.DataFrame:
    """The predict contract's rows (``PREDICT_COLUMNS``) of the frame's queries, in order.

    Equal to ``forecast_rows(build_answers(frame, ...))``: ``risk_Hd`` and
    ``median_days`` only for personalised forecasts, ``safety`` the level in
    force ("urgent", "review" or blank), ``suggested_date`` the personalised
    session-by date.
    """
    ctx = frame.ctx
    n = len(ctx)
    personal = np.isin(frame.pre_safety.astype(str), list(FORECAST_STATUSES))
    as_of = ctx["as_of"].to_numpy(dtype="datetime64[ns]")
    level = ctx["safety"].to_numpy(dtype=object)
    out: dict[str, object] = {
        "patient_id": ctx["patient_id"].to_numpy(dtype=object),
        "as_of": _iso(as_of, np.ones(n, dtype=bool)),
        "status": frame.status.astype(object),
        "safety": np.where(pd.isna(level), None, level).astype(object),
        "days_since_session": _whole(ctx["days_since_session"].to_numpy(dtype=float),
                                     np.ones(n, dtype=bool)),
    }
    by_day = dict(zip(settings.horizons, np.asarray(settings.horizons, dtype=int) - 1,
                      strict=True))
    for h in HORIZONS:
        col = np.full(n, np.nan)
        if h in by_day:
            v = frame.daily[:, by_day[h]]
            ok = personal & np.isfinite(v)
            # Python's round, as the answers' risk block rounds each value.
            col[ok] = [round(x, 4) for x in v[ok].tolist()]
        out[f"risk_{h}d"] = col
    medians = median_days(np.nan_to_num(frame.daily, nan=0.0))
    out["median_days"] = _whole(medians, personal & (medians > 1))
    by = as_of + frame.suggestion["session_by"].astype("timedelta64[D]")
    out["suggested_date"] = _iso(by, personal)
    table = pd.DataFrame(out, columns=list(PREDICT_COLUMNS))
    for h in HORIZONS:
        table[f"risk_{h}d"] = table[f"risk_{h}d"].astype(float)
    return table
