"""Which suicidal-ideation flags are in force for a patient on a date.

:func:`forecast.instruments.safety_flags` reads one assessment (the fixed
rules: "urgent" for C-SSRS ideation >= 4 or behaviour, "review" for PHQ-9
item 9 >= 1 or C-SSRS ideation 1-3). This module decides which flagged
answers still count on a given as-of date, for every path that answers a
clinician (forecasts, the model-free safety block of the page and of CDS
Hooks), so the rule exists once:

- every flagged answer since the last session is in force (the data carry no
  time of day, so an answer on the session day counts);
- an older flagged answer stays in force until a later *negative screen*
  closes it: a C-SSRS flag is closed only by a later C-SSRS screen with
  ideation 0 and no behaviour; an item-9 flag by a later item 9 = 0 or a
  negative C-SSRS screen. A screen on the same day as the flag does not close
  it (the order within a day is unknown). Sessions never close a flag.

A flag in force makes the status ``urgent_review`` (level "urgent") or
``safety_review`` (level "review"); both override every maintenance
suggestion. The absence of a flag is never a clearance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forecast.instruments import (
    DEFAULT_SAFETY_RULES,
    REVIEW,
    URGENT,
    SafetyRules,
    score_assessments,
)
from forecast.outcomes import day_key

#: Status of an answer whose safety level is "urgent" / "review".
STATUS_OF_LEVEL: dict[str, str] = {URGENT: "urgent_review", REVIEW: "safety_review"}
SAFETY_STATUSES: tuple[str, ...] = tuple(STATUS_OF_LEVEL.values())

NOT_AN_ASSESSMENT = "This is not a suicide-risk assessment."
#: Statement when no flag was ever raised on the record.
NO_FLAG_STATEMENT = (
    "No suicidal-ideation rule was triggered by the answers on record. " + NOT_AN_ASSESSMENT
)
#: Statement when every earlier flag was followed by a negative screen.
CLOSED_FLAG_STATEMENT = (
    "No suicidal-ideation rule is in force: each earlier flagged answer was followed by a "
    "negative screen, and none was given since the last session. " + NOT_AN_ASSESSMENT
)
FLAG_STATEMENT = (
    "A suicidal-ideation answer on record needs clinical review before any maintenance "
    "planning. " + NOT_AN_ASSESSMENT
)
URGENT_STATEMENT = (
    "A high-severity suicidal-ideation or behaviour answer on record needs immediate "
    "clinical review and safety precautions. " + NOT_AN_ASSESSMENT
)

_NAT = np.datetime64("NaT", "ns")


@dataclass(frozen=True)
class FlagPairs:
    """Flagged answers paired with the queries they belong to (one entry per pair).

    Attributes
    ----------
    query : ndarray of int
        Index of the query (position in the query arrays).
    row : ndarray of int
        Row of the scored assessments frame holding the flagged answer.
    date : ndarray of datetime64[ns]
        Date of the answer.
    closed_by : ndarray of datetime64[ns]
        Date of the negative screen that closed the flag by the query's as-of
        (NaT when none did).
    in_force : ndarray of bool
        The flag counts for the query (see the module docstring).
    """

    query: np.ndarray
    row: np.ndarray
    date: np.ndarray
    closed_by: np.ndarray
    in_force: np.ndarray


def _first_after(
    codes: np.ndarray,
    keys: np.ndarray,
    rows: np.ndarray,
    candidates: np.ndarray,
    dates: np.ndarray,
) -> np.ndarray:
    """For each of ``rows``, the date of the first candidate row strictly after it
    of the same patient (NaT if none); ``keys`` from :func:`forecast.outcomes.day_key`."""
    order = candidates[np.argsort(keys[candidates], kind="stable")]
    at = np.searchsorted(keys[order], keys[rows] + 1, side="left")
    ok = at < len(order)
    same = np.zeros(len(rows), dtype=bool)
    same[ok] = codes[order[at[ok]]] == codes[rows[ok]]
    out = np.full(len(rows), _NAT)
    out[same] = dates[order[at[same]]]
    return out


def closing_screens(
    scored: pd.DataFrame, codes: np.ndarray, rules: SafetyRules = DEFAULT_SAFETY_RULES
) -> np.ndarray:
    """For each scored row, the date of the first later negative screen that closes its flag.

    Parameters
    ----------
    scored : DataFrame
        Output of :func:`forecast.instruments.score_assessments`.
    codes : ndarray of int
        Patient code of each row (equal codes, same patient).
    rules : SafetyRules
        The per-answer rules (which C-SSRS level raises a flag).

    Returns
    -------
    ndarray of datetime64[ns]
        NaT for unflagged rows and for flags no later screen has closed.
    """
    n = len(scored)
    out = np.full(n, _NAT)
    if n == 0:
        return out
    dates = scored["date"].to_numpy(dtype="datetime64[ns]")
    flag = pd.notna(scored["safety"]).to_numpy()
    item9 = scored["item9"].to_numpy(dtype=float)
    ideation = scored["cssrs_ideation"].to_numpy(dtype=float)
    behaviour = scored["cssrs_behavior"].to_numpy(dtype=float)
    codes = np.asarray(codes)
    keys = day_key(codes, dates.astype("datetime64[D]").astype(np.int64))
    # A negative screen is an unflagged answer that asked the question.
    neg_cssrs = ~flag & (ideation == 0)
    neg_any = neg_cssrs | (~flag & (item9 == 0))
    # Raised by the C-SSRS: only a C-SSRS screen closes it.
    by_cssrs = flag & ((ideation >= rules.review_cssrs_ideation) | (behaviour >= 1))
    by_item9 = flag & ~by_cssrs
    for rows, negative in ((by_cssrs, neg_cssrs), (by_item9, neg_any)):
        idx = np.flatnonzero(rows)
        if len(idx) and negative.any():
            out[idx] = _first_after(codes, keys, idx, np.flatnonzero(negative), dates)
    return out


def pair_flags(
    scored: pd.DataFrame,
    codes: np.ndarray,
    q_codes: np.ndarray,
    q_as_of: np.ndarray,
    q_last_session: np.ndarray,
    rules: SafetyRules = DEFAULT_SAFETY_RULES,
) -> FlagPairs:
    """Every flagged answer on or before each query's as-of, and whether it is in force.

    Parameters
    ----------
    scored : DataFrame
        Scored assessments of the queried patients (any order).
    codes : ndarray of int
        Patient code of each scored row.
    q_codes, q_as_of, q_last_session : ndarray
        Per query: patient code, as-of date and the last session on or before
        it (NaT when there is none).
    rules : SafetyRules
        The per-answer rules used to score ``scored``.

    Returns
    -------
    FlagPairs
        Pairs in the order of the queries, then of the rows in ``scored``.
    """
    safety = scored["safety"].to_numpy(dtype=object)
    f_rows = np.flatnonzero(pd.notna(safety))
    n = len(q_codes)
    if not len(f_rows) or not n:
        empty = np.zeros(0, dtype=np.int64)
        nat = np.zeros(0, dtype="datetime64[ns]")
        return FlagPairs(empty, empty, nat, nat, np.zeros(0, dtype=bool))
    closed_all = closing_screens(scored, codes, rules)
    f_codes = np.asarray(codes)[f_rows]
    order = np.argsort(f_codes, kind="stable")
    sorted_codes = f_codes[order]
    lo = np.searchsorted(sorted_codes, q_codes, side="left")
    hi = np.searchsorted(sorted_codes, q_codes, side="right")
    counts = hi - lo
    p_q = np.repeat(np.arange(n), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    p_r = f_rows[order[starts + np.arange(len(p_q))]]
    dates = scored["date"].to_numpy(dtype="datetime64[ns]")[p_r]
    as_of = np.asarray(q_as_of, dtype="datetime64[ns]")[p_q]
    keep = dates <= as_of
    p_q, p_r, dates, as_of = p_q[keep], p_r[keep], dates[keep], as_of[keep]
    last = np.asarray(q_last_session, dtype="datetime64[ns]")[p_q]
    closed = closed_all[p_r]
    closed = np.where(closed <= as_of, closed, _NAT)
    in_force = np.isnat(last) | (dates >= last) | np.isnat(closed)
    return FlagPairs(p_q, p_r, dates, closed, in_force)


def flag_levels(pairs: FlagPairs, safety: np.ndarray, n_queries: int) -> np.ndarray:
    """The safety level of each query: the most severe flag in force (None when none is)."""
    rank = np.zeros(n_queries, dtype=int)
    live = pairs.in_force
    f_rank = np.where(safety[pairs.row[live]] == URGENT, 2, 1)
    np.maximum.at(rank, pairs.query[live], f_rank)
    return np.where(rank == 2, URGENT, np.where(rank == 1, REVIEW, None))


def _day(ts: Any) -> str:
    return str(pd.Timestamp(ts).date())


def safety_block(
    level: str | None,
    flags: list[tuple[Any, str, str, Any, bool]],
    last_session: Any = None,
) -> dict[str, Any]:
    """The ``safety`` block of an answer.

    Parameters
    ----------
    level : str or None
        The query's level from :func:`flag_levels`.
    flags : list of tuple
        ``(date, answer, level, closed_by, in_force)`` per flagged answer on
        or before as-of, in date order.
    last_session : date-like, optional
        The last session on or before as-of (None when there is none).

    Returns
    -------
    dict
        ``level``, ``reasons`` (one line per flag in force), ``statement``,
        ``triggered_by`` (the flags in force: date, answer, level,
        ``since_last_session``, ``negative_screen_since``) and ``closed`` (earlier
        flags a negative screen closed: date, answer, level, ``closed_by``).
    """
    has_session = last_session is not None and not pd.isna(last_session)
    last = pd.Timestamp(last_session) if has_session else None
    triggered, reasons, closed = [], [], []
    for day, answer, flag, closed_by, in_force in flags:
        date = _day(day)
        screened = None if closed_by is None or pd.isna(closed_by) else _day(closed_by)
        if not in_force:
            closed.append({"date": date, "answer": answer, "level": flag, "closed_by": screened})
            continue
        since = last is None or pd.Timestamp(day) >= last
        triggered.append(
            {
                "date": date,
                "answer": answer,
                "level": flag,
                "since_last_session": bool(has_session and since),
                "negative_screen_since": screened,
            }
        )
        if screened:
            tail = f"; negative screen on {screened}"
        else:
            tail = "; no negative screen since"
        where = "" if since else " (before the last session)"
        reasons.append(f"{answer} on {date}{where}{tail}")
    if level is None:
        statement = CLOSED_FLAG_STATEMENT if closed else NO_FLAG_STATEMENT
    else:
        statement = URGENT_STATEMENT if level == URGENT else FLAG_STATEMENT
    return {
        "level": level,
        "reasons": reasons,
        "statement": statement,
        "triggered_by": triggered,
        "closed": closed,
    }


def rule_safety(
    cohort: Any, as_of: Any = None, rules: SafetyRules = DEFAULT_SAFETY_RULES
) -> dict[str, Any]:
    """The safety block of one patient from the fixed rules alone (no model needed).

    Used where no forecast is available (no model loaded); forecasts build the
    same block through :func:`pair_flags` on the whole query set.

    Parameters
    ----------
    cohort : Cohort
        One patient's history.
    as_of : date-like, optional
        Defaults to the latest date on record.
    rules : SafetyRules
        The per-answer rules.
    """
    scored = score_assessments(cohort.assessments, rules)
    dates = pd.concat([scored["date"], cohort.sessions["date"]])
    if as_of is None:
        as_of = dates.max() if len(dates) else pd.Timestamp("1970-01-01")
    as_of = np.datetime64(pd.Timestamp(as_of).tz_localize(None), "ns")
    sessions = cohort.sessions["date"].to_numpy(dtype="datetime64[ns]")
    sessions = sessions[sessions <= as_of]
    last = sessions.max() if len(sessions) else _NAT
    codes = np.zeros(len(scored), dtype=np.int64)
    pairs = pair_flags(
        scored, codes, np.zeros(1, dtype=np.int64), np.array([as_of]), np.array([last]), rules
    )
    safety = scored["safety"].to_numpy(dtype=object)
    level = flag_levels(pairs, safety, 1)[0]
    order = np.argsort(pairs.date, kind="stable")
    reason = scored["safety_reason"].to_numpy(dtype=object)
    flags = [
        (
            pairs.date[k],
            str(reason[pairs.row[k]]),
            safety[pairs.row[k]],
            pairs.closed_by[k],
            bool(pairs.in_force[k]),
        )
        for k in order
    ]
    return safety_block(level, flags, None if np.isnat(last) else last)
