"""Scoring of the PHQ-9 and the C-SSRS screener, and the fixed safety-flag rules.

Everything here is a pure, vectorised function of the answers; no model is
involved. Sources:

- PHQ-9 bands: Kroenke, Spitzer & Williams (2001), J Gen Intern Med 16:606-613.
- Prorating with at most two missing items: sum x 9 / answered, rounded half up
  (Kroenke et al. 2001 scoring notes; common practice in IAPT/NHS Talking Therapies).
- C-SSRS screener levels: Posner et al. (2011), Am J Psychiatry 168:1266-1277.
- Item 9 is not a clearance: Simon et al. (2013), Psychiatr Serv 64:1195-1202;
  Louzon et al. (2016), Psychiatr Serv 67:517-522 (VA cohort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forecast.contract import PHQ9_ITEMS

# --- LOINC / SNOMED codes used by the FHIR importer and exporter -------------
LOINC_SYSTEM = "http://loinc.org"
SNOMED_SYSTEM = "http://snomed.info/sct"
LOINC_PHQ9_PANEL = "44249-1"
LOINC_PHQ9_ITEMS: tuple[str, ...] = (
    "44250-9",
    "44255-8",
    "44259-0",
    "44254-1",
    "44251-7",
    "44258-2",
    "44252-5",
    "44253-3",
    "44260-8",  # item 9: thoughts of being better off dead or of self-harm
)
LOINC_PHQ9_TOTAL = "44261-6"
LOINC_PHQ9_DIFFICULTY = "69722-7"
#: LOINC answer codes of the PHQ-9 items, mapped to their scores.
LOINC_PHQ9_ANSWERS: dict[str, int] = {
    "LA6568-5": 0,
    "LA6569-3": 1,
    "LA6570-1": 2,
    "LA6571-9": 3,
}
LOINC_PHQ2_PANEL = "55757-9"
LOINC_PHQ2_TOTAL = "55758-7"
LOINC_CSSRS_PANEL = "93373-9"
LOINC_CSSRS_IDEATION: tuple[str, ...] = ("93246-7", "93247-5", "93248-3", "93249-1", "93250-9")
LOINC_CSSRS_BEHAVIOR = "93267-3"
LOINC_CSSRS_RISK = "93374-7"
SNOMED_PHQ9_SCORE = "720433000"

# --- PHQ-9 -------------------------------------------------------------------
#: Severity bands (lower bound inclusive) from Kroenke et al. (2001).
SEVERITY_BANDS: tuple[tuple[int, str], ...] = (
    (0, "minimal"),
    (5, "mild"),
    (10, "moderate"),
    (15, "moderately_severe"),
    (20, "severe"),
)
#: At most this many items may be missing before the total is invalid.
MAX_MISSING_ITEMS = 2


def round_half_up(x: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer, halves away from zero for non-negative input.

    numpy's ``round`` rounds halves to even (12.5 -> 12); questionnaire manuals
    round halves up (12.5 -> 13).
    """
    return np.floor(np.asarray(x, dtype=float) + 0.5)


def phq9_from_items(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total PHQ-9 score from item answers, prorating one or two missing items.

    Parameters
    ----------
    items : ndarray of shape (n, 9)
        Item answers 0-3, NaN where unanswered.

    Returns
    -------
    total : ndarray of shape (n,)
        ``sum * 9 / answered`` rounded half up when at most two items are
        missing; NaN when three or more are missing.
    answered : ndarray of shape (n,)
        Number of answered items.
    """
    items = np.asarray(items, dtype=float)
    if items.ndim != 2 or items.shape[1] != 9:
        raise ValueError(f"PHQ-9 items must have shape (n, 9), got {items.shape}")
    answered = np.sum(~np.isnan(items), axis=1)
    s = np.nansum(items, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = round_half_up(s * 9.0 / answered)
    total[answered < 9 - MAX_MISSING_ITEMS] = np.nan
    return total, answered


def severity_band(total: np.ndarray | pd.Series) -> np.ndarray:
    """Kroenke severity band names for PHQ-9 totals (object array, None where NaN)."""
    t = np.asarray(total, dtype=float)
    bounds = np.array([b for b, _ in SEVERITY_BANDS], dtype=float)
    names = np.array([n for _, n in SEVERITY_BANDS], dtype=object)
    idx = np.searchsorted(bounds, np.nan_to_num(t, nan=0.0), side="right") - 1
    out = names[np.clip(idx, 0, len(names) - 1)].astype(object)
    out[np.isnan(t)] = None
    return out


# --- Safety flags --------------------------------------------------------------
URGENT = "urgent"
REVIEW = "review"


@dataclass(frozen=True)
class SafetyRules:
    """The fixed rules that raise a suicidal-ideation flag on one assessment.

    Defaults: "urgent" for C-SSRS ideation >= 4 (some intent, or
    plan and intent) or any recent suicidal behaviour; "review" for PHQ-9
    item 9 >= 1 or C-SSRS ideation 1-3. No rule ever produces a "no risk"
    label: the absence of a flag only means that none of these rules fired.
    """

    urgent_cssrs_ideation: int = 4
    review_cssrs_ideation: int = 1
    review_item9: int = 1


DEFAULT_SAFETY_RULES = SafetyRules()


def safety_flags(
    item9: np.ndarray | pd.Series,
    cssrs_ideation: np.ndarray | pd.Series,
    cssrs_behavior: np.ndarray | pd.Series,
    rules: SafetyRules = DEFAULT_SAFETY_RULES,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the safety rules to each assessment.

    Returns
    -------
    level : object ndarray
        ``"urgent"``, ``"review"`` or None (no rule fired; never "no risk").
    reason : object ndarray
        A sentence naming the answer that triggered the flag, or None.
    """
    i9 = np.asarray(item9, dtype=float)
    ci = np.asarray(cssrs_ideation, dtype=float)
    cb = np.asarray(cssrs_behavior, dtype=float)
    n = len(i9)
    level = np.full(n, None, dtype=object)
    reason = np.full(n, None, dtype=object)

    review_i9 = i9 >= rules.review_item9
    review_ci = ci >= rules.review_cssrs_ideation
    urgent_ci = ci >= rules.urgent_cssrs_ideation
    urgent_cb = cb >= 1

    # Least to most severe, so the most severe reason wins.
    level[review_i9] = REVIEW
    reason[review_i9] = np.char.add(
        "PHQ-9 item 9 (thoughts of death or self-harm) answered ",
        np.nan_to_num(i9[review_i9]).astype(int).astype(str),
    ).astype(object)
    level[review_ci] = REVIEW
    reason[review_ci] = np.char.add(
        "C-SSRS screener ideation level ",
        np.nan_to_num(ci[review_ci]).astype(int).astype(str),
    ).astype(object)
    level[urgent_ci] = URGENT
    reason[urgent_ci] = np.char.add(
        "C-SSRS screener ideation level ",
        np.char.add(np.nan_to_num(ci[urgent_ci]).astype(int).astype(str), " (intent or plan)"),
    ).astype(object)
    level[urgent_cb] = URGENT
    reason[urgent_cb] = "C-SSRS screener: suicidal behaviour reported"
    return level, reason


def score_assessments(
    assessments: pd.DataFrame, rules: SafetyRules = DEFAULT_SAFETY_RULES
) -> pd.DataFrame:
    """Add scored columns to a canonical assessments frame.

    Added columns: ``phq9`` (the total used everywhere: from the items when at
    most two are missing, else ``phq9_total``), ``phq9_answered``,
    ``phq9_prorated`` (bool), ``severity``, ``item9``, ``safety``
    ("urgent" / "review" / None) and ``safety_reason``. Returns a new frame
    with the same index.
    """
    n = len(assessments)
    nan = np.full(n, np.nan)

    def column(name: str) -> np.ndarray:
        if name in assessments.columns:
            return assessments[name].to_numpy(dtype=float)
        return nan

    items = np.column_stack([column(c) for c in PHQ9_ITEMS]) if n else np.empty((0, 9))
    from_items, answered = phq9_from_items(items)
    phq9 = np.where(np.isnan(from_items), column("phq9_total"), from_items)
    item9 = items[:, 8]
    level, reason = safety_flags(item9, column("cssrs_ideation"), column("cssrs_behavior"), rules)
    # Build the new columns once and join them in one step: adding them one by
    # one costs milliseconds per call, which matters on the serving path.
    scored = {
        "phq9": phq9,
        "phq9_answered": answered,
        "phq9_prorated": (answered < 9) & ~np.isnan(from_items),
        "severity": severity_band(phq9),
        "item9": item9,
        "safety": level,
        "safety_reason": reason,
    }
    # One constructor call: the given columns (their arrays, dtypes kept),
    # blank instrument columns that were absent, then the scored ones.
    # Own copies of the given columns, so the result shares no memory with the
    # input and the constructor need not copy (or consolidate) again.
    columns: dict[Any, Any] = {
        c: assessments[c].to_numpy(copy=True) for c in assessments.columns if c not in scored
    }
    for c in (*PHQ9_ITEMS, "phq9_total", "cssrs_ideation", "cssrs_behavior"):
        if c not in columns:
            columns[c] = nan.copy()
    columns.update(scored)
    return pd.DataFrame(columns, index=assessments.index, copy=False)
