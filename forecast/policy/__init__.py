"""Maintenance-timing suggestions with fixed safety overrides.

The policy turns a patient's history and a trained model into the forecast
forecast answer: a status, the safety block, the conditional risk curve,
the suggested session-by date with a window, the drivers and the caveats.

Everything is computed for many (patient, as-of) queries at once: the history
is joined to the queries with sorted merges, the model is called once for all
queries on a daily grid, and the suggestion rules are array operations. Only
the final JSON-able dictionaries are built per query.

Rules (see README.md (policy section) for the clinical reasons):

- ``no_treatment``: no session on record by as-of.
- ``insufficient_data``: no baseline PHQ-9, or no valid PHQ-9 after the last
  session yet (response unknown), or fewer scores than the minimum history.
  The answer carries the population estimate stored with the model
  version, labelled as such, never a personalised forecast.
- ``not_in_response``: the first PHQ-9 after the last session was not a
  response, or the benefit has visibly waned since (benefit-waned criteria of
  the outcome definition met at a later assessment).
- ``routine`` / ``session_due``: the personalised forecast; ``session_due``
  when the risk already exceeds the threshold within a day, or the clamped
  date is on or before as-of.
- ``urgent_review`` / ``safety_review``: a suicidal-ideation flag in force
  (level "urgent" / "review"; the rules of :mod:`forecast.instruments` and
  :mod:`forecast.safety`: every flagged answer since the last session, and
  any older one no negative screen has followed). It takes precedence over
  every other status; the safety block is filled for every status.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import HORIZONS, PREDICT_COLUMNS
from forecast.policy.answers import build_answers
from forecast.policy.context import normalise_queries
from forecast.policy.model_access import population_from_model
from forecast.policy.risk import ForecastFrame, forecast_frame, suggest_offsets
from forecast.policy.settings import (
    CONDITIONAL_ON,
    DECISION_SUPPORT,
    FORECAST_STATUSES,
    NOT_SI_ASSESSMENT,
    POPULATION_LABEL,
    PolicySettings,
    check_threshold,
)
from forecast.policy.table import frame_table
from forecast.safety import NO_FLAG_STATEMENT

__all__ = [
    "CONDITIONAL_ON",
    "DECISION_SUPPORT",
    "FORECAST_STATUSES",
    "NOT_SI_ASSESSMENT",
    "NO_FLAG_STATEMENT",
    "POPULATION_LABEL",
    "ForecastFrame",
    "PolicySettings",
    "check_threshold",
    "forecast_cohort",
    "forecast_frame",
    "forecast_queries",
    "forecast_rows",
    "forecast_table",
    "population_from_model",
    "suggest_offsets",
]


def forecast_queries(
    cohort: Cohort,
    model: Any,
    queries: pd.DataFrame,
    settings: PolicySettings | None = None,
    *,
    daily: bool = True,
) -> list[dict]:
    """Forecast answers for (patient, as-of) queries.

    Parameters
    ----------
    cohort : Cohort
        Histories of the queried patients (rows after a query's as-of are
        ignored for that query).
    model : LoadedModel
        A registry version (``.version``, ``.card``, ``.bundle``, ``.definition``).
    queries : DataFrame
        ``patient_id``, ``as_of`` and an optional per-row ``threshold``.
    settings : PolicySettings, optional
        Rules and defaults.
    daily : bool
        Include the daily risk curve and band (``risk.daily``); without it the
        answer carries the horizons only (the suggestion is the same: it is
        read from the daily curve either way).

    Returns
    -------
    list of dict
        One JSON-able answer per query, in query order (see module docstring
        and README.md (policy section) for the keys).
    """
    settings = settings or PolicySettings()
    q = normalise_queries(queries, settings)
    unknown = set(q["patient_id"]) - set(cohort.patients["patient_id"].astype(str))
    if unknown:
        raise ValueError(f"{len(unknown)} queried patient(s) are not in the cohort")
    frame = forecast_frame(cohort, model, q, settings, daily=daily)
    return build_answers(frame, model, settings, daily=daily)


def forecast_cohort(
    cohort: Cohort,
    model: Any,
    as_of: str | pd.Timestamp,
    settings: PolicySettings | None = None,
    *,
    daily: bool = True,
) -> list[dict]:
    """Forecast answers for every patient of ``cohort`` at one date.

    Parameters
    ----------
    cohort : Cohort
        A clinic's data.
    model : LoadedModel
        A registry version.
    as_of : str or Timestamp
        Date of the forecast (rows after it are ignored).
    settings : PolicySettings, optional
        Rules and defaults.
    daily : bool
        Include the daily risk curve and band (see :func:`forecast_queries`).

    Returns
    -------
    list of dict
        One answer per patient, in the order of ``cohort.patients``.
    """
    q = pd.DataFrame(
        {"patient_id": cohort.patients["patient_id"].astype(str).to_numpy(), "as_of": as_of}
    )
    return forecast_queries(cohort, model, q, settings, daily=daily)


def forecast_table(
    cohort: Cohort,
    model: Any,
    as_of: str | pd.Timestamp,
    settings: PolicySettings | None = None,
) -> pd.DataFrame:
    """The ``forecast predict`` table of every patient of ``cohort`` at one date.

    Equal to ``forecast_rows(forecast_cohort(cohort, model, as_of, settings))``
    (a test checks it) without building the JSON answers, which is most of
    the time for a whole clinic: the same forecast frame, read as columns.

    Parameters
    ----------
    cohort : Cohort
        A clinic's data.
    model : LoadedModel
        A registry version.
    as_of : str or Timestamp
        Date of the forecast (rows after it are ignored).
    settings : PolicySettings, optional
        Rules and defaults.

    Returns
    -------
    DataFrame
        ``contract.PREDICT_COLUMNS``, one row per patient in the order of
        ``cohort.patients``.
    """
    settings = settings or PolicySettings()
    q = normalise_queries(
        pd.DataFrame(
            {"patient_id": cohort.patients["patient_id"].astype(str).to_numpy(), "as_of": as_of}
        ),
        settings,
    )
    frame = forecast_frame(cohort, model, q, settings, daily=False, answers=False)
    return frame_table(frame, settings)


def forecast_rows(answers: list[dict]) -> pd.DataFrame:
    """Flatten answers into the ``forecast predict`` table (contract.PREDICT_COLUMNS).

    ``risk_Hd`` and ``median_days`` are blank unless the answer carries a
    personalised forecast; ``safety`` is "urgent", "review" or blank;
    ``suggested_date`` is the session-by date of a personalised suggestion.
    """
    rows = []
    for a in answers:
        risk = a.get("risk") or {}
        personal = risk.get("kind") == "personalised"
        by_h = {h["days"]: h["risk"] for h in risk.get("horizons", [])} if personal else {}
        sugg = a.get("suggestion") or {}
        row = {
            "patient_id": a["patient_id"],
            "as_of": a["as_of"],
            "status": a["status"],
            "safety": (a.get("safety") or {}).get("level"),
            "days_since_session": a.get("days_since_session"),
            **{f"risk_{h}d": by_h.get(h) for h in HORIZONS},
            "median_days": a.get("median_remaining_days") if personal else None,
            "suggested_date": (
                sugg.get("session_by") if sugg.get("basis") == "personalised" else None
            ),
        }
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(PREDICT_COLUMNS))
    df["days_since_session"] = df["days_since_session"].astype("Int64")
    df["median_days"] = df["median_days"].astype("Int64")
    for h in HORIZONS:
        df[f"risk_{h}d"] = pd.to_numeric(df[f"risk_{h}d"], errors="coerce").astype(float)
    return df
