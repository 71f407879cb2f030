"""One JSON-able answer per query, built from the forecast frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pandas.core.dtypes.cast import maybe_box_native

from forecast.policy.drivers import feature_drivers
from forecast.policy.model_access import definition_value, model_version, outcome_definition
from forecast.policy.risk import ForecastFrame, median_days
from forecast.policy.settings import (
    DECISION_SUPPORT,
    FORECAST_STATUSES,
    NOT_SI_ASSESSMENT,
    PolicySettings,
)
from forecast.policy.texts import (
    iso_day,
    population_text,
    pre_session_basis,
    risk_block,
    status_reason,
    suggestion_block,
    whole,
)
from forecast.safety import SAFETY_STATUSES, safety_block


def flag_groups(flagged: dict[str, np.ndarray]) -> dict[int, list[tuple[Any, str, str, Any, bool]]]:
    """Each query's flagged answers ``(date, answer, level, closed_by, in_force)`` in date order."""
    # Stable order by (qi, date), as a stable sort of the rows by both.
    order = np.lexsort((flagged["date"], flagged["qi"]))
    groups: dict[int, list[tuple[Any, str, str, Any, bool]]] = {}
    for qi, day, reason, level, closed_by, in_force in zip(
        flagged["qi"][order].tolist(),
        list(pd.DatetimeIndex(flagged["date"][order])),
        flagged["safety_reason"][order].tolist(),
        flagged["safety"][order].tolist(),
        list(pd.DatetimeIndex(flagged["closed_by"][order])),
        flagged["in_force"][order].tolist(),
        strict=True,
    ):
        groups.setdefault(qi, []).append((day, str(reason), level, closed_by, in_force))
    return groups


def _drivers_per_query(frame: ForecastFrame, model: Any, k: int) -> list[list[dict]]:
    drivers: list[list[dict]] = [[] for _ in range(len(frame.ctx))]
    if frame.X is not None:
        found = feature_drivers(model, frame.X, k, **frame.encoded)
        for r, items in zip(frame.forecast_rows, found, strict=True):
            drivers[r] = items
    return drivers


def _caveats(
    base: list[str],
    status: str,
    personal: bool,
    population: bool,
    unknown: list[str],
    c: dict[str, Any],
    risk: dict[str, Any] | None,
) -> list[str]:
    caveats = list(base)
    basis = pre_session_basis(c)
    if personal and basis is not None:
        caveats.append(
            f"The response to the last session rests on {basis}, taken at or before the "
            "session; the scores after it will confirm or revise this forecast."
        )
    if personal and unknown:
        caveats.append(
            "Not in this history: "
            + ", ".join(unknown)
            + ". The forecast uses the average effect of each over the training patients, "
            "so it is less specific to this patient."
        )
    if personal and risk:
        at28 = next((h for h in risk["horizons"] if h["days"] == 28), None)
        if at28 and at28["lower"] is not None and at28["upper"] - at28["lower"] > 0.5:
            caveats.append(
                f"This forecast is uncertain: the 28-day risk could lie anywhere from "
                f"{100 * at28['lower']:.0f} % to {100 * at28['upper']:.0f} % (the model refitted "
                "on resampled training patients disagrees), usually because few training "
                "patients resemble this one. Weigh it accordingly."
            )
    if population:
        caveats.append(
            "The risks shown are a population estimate from the model's training "
            "episodes, not a personalised forecast."
        )
    if status in SAFETY_STATUSES:
        caveats.append(
            "Suicidal-ideation answers override any maintenance timing; review them first."
        )
    return caveats


def _current(c: dict[str, Any]) -> dict[str, Any]:
    """The ``current`` block: latest PHQ-9, severity, response state, change from baseline."""
    return {
        "phq9": whole(c["latest_phq9"]),
        "severity": (c["severity"] if whole(c["latest_phq9"]) is not None else None),
        "date": iso_day(c["latest_phq9_date"]),
        "response_state": c["response_state"],
        "baseline_phq9": whole(c["baseline_phq9"]),
        "change_from_baseline": (
            None
            if pd.isna(c["baseline_phq9"]) or pd.isna(c["latest_phq9"])
            else int(c["latest_phq9"] - c["baseline_phq9"])
        ),
    }


def _median_block(
    c: dict[str, Any], median_day: float, personal: bool, grid_days: int
) -> tuple[int | None, str | None]:
    """``median_remaining_days`` and ``median_reason`` of one answer."""
    if not personal:
        return None, "No personalised forecast applies to this status."
    median = whole(median_day)
    if median is None:
        return None, (
            f"The risk stays below 50 % within the {grid_days}-day horizon, so the "
            "median remaining benefit lies beyond what the model reports."
        )
    if median <= 1:
        # Half or more of the risk is a waning already past but not yet seen.
        return None, (
            "More likely than not the benefit has already waned since the latest "
            f"PHQ-9 ({iso_day(c['latest_phq9_date'])}); a PHQ-9 now would tell."
        )
    return median, None


def build_answers(
    frame: ForecastFrame, model: Any, settings: PolicySettings, daily: bool = True
) -> list[dict]:
    """One answer per query of ``frame`` (keys: see the docs' suggestions page).

    Without ``daily`` the risk block has no ``daily`` curve (horizons only).
    """
    days = frame.days
    with_daily = daily
    daily, lower, upper = frame.daily, frame.lower, frame.upper
    sugg = frame.suggestion
    version = model_version(model)
    frac = definition_value(outcome_definition(model), "response_fraction", 0.5)
    medians = median_days(np.nan_to_num(daily, nan=0.0))
    hidx = np.asarray(settings.horizons, dtype=int) - 1
    drivers = _drivers_per_query(frame, model, settings.n_drivers)
    flags = flag_groups(frame.flagged)
    caveats_base = [
        DECISION_SUPPORT,
        NOT_SI_ASSESSMENT,
        f"Model version {version or 'unknown'}; valid only for patients like those it was "
        f"trained on{population_text(model)}.",
    ]
    answers = []
    for i, c in enumerate(context_records(frame.ctx)):
        st = str(frame.status[i])
        base = str(frame.pre_safety[i])
        as_of = pd.Timestamp(c["as_of"])
        safety = safety_block(
            c["safety"], flags.get(i, []), c["last_session"] if c["has_session"] else None
        )
        personal = base in FORECAST_STATUSES
        population = base == "insufficient_data" and not np.isnan(daily[i]).all()
        risk = None
        if personal or population:
            risk = risk_block(
                days, daily[i], lower[i], upper[i], hidx, personal, settings, with_daily
            )
        median, median_reason = _median_block(c, medians[i], personal, len(days))
        suggestion = suggestion_block(c, i, sugg, base, personal, population, as_of, settings)
        if st in SAFETY_STATUSES:
            first = (
                "Review the suicidal-ideation answer first; this maintenance timing applies "
                "only after that review. "
                if suggestion["session_by"]
                else "Review the suicidal-ideation answer first. "
            )
            suggestion["rationale"] = first + suggestion["rationale"]
        answers.append(
            {
                "patient_id": c["patient_id"],
                "as_of": iso_day(as_of),
                "model_version": version,
                "status": st,
                "status_reason": status_reason(st, base, c, sugg, i, safety, frac),
                "safety": safety,
                "days_since_session": whole(c["days_since_session"]),
                "last_session": (
                    {"date": iso_day(c["last_session"]), "kind": c["last_session_kind"]}
                    if c["has_session"]
                    else None
                ),
                "current": _current(c),
                "risk": risk,
                "median_remaining_days": median,
                "median_reason": median_reason,
                "suggestion": suggestion,
                "drivers": drivers[i],
                "caveats": _caveats(
                    caveats_base, st, personal, population, frame.unknown[i], c, risk
                ),
                "decision_support": True,
            }
        )
    return answers


def context_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame.to_dict("records")``: the same Python values, at a fraction of the cost.

    ``to_dict`` works column by column, which dominates on the wide context
    frame of a one-patient forecast; one conversion of the whole frame to
    objects gives the same values (Timestamps for dates, Python numbers and
    booleans, object cells boxed as ``to_dict`` boxes them). A test checks
    both agree.
    """
    columns = frame.columns.tolist()
    values = frame.to_numpy(dtype=object)
    for j, dtype in enumerate(frame.dtypes):
        if not isinstance(dtype, np.dtype) or dtype.kind == "O":
            values[:, j] = [maybe_box_native(v) for v in values[:, j]]
    return [dict(zip(columns, row, strict=True)) for row in values.tolist()]
