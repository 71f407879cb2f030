"""The sentences and blocks of an answer: risk, suggestion and status reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from forecast.instruments import URGENT
from forecast.policy.settings import CONDITIONAL_ON, POPULATION_LABEL, PolicySettings
from forecast.safety import SAFETY_STATUSES


def iso_day(ts: Any) -> str | None:
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d")


def human_date(ts: Any) -> str:
    """A date as clinicians read it (``3 Mar 2025``); empty for a blank date."""
    if ts is None or (isinstance(ts, str) and not ts) or pd.isna(ts):
        return ""
    t = pd.Timestamp(ts)
    return f"{t.day} {t.strftime('%b %Y')}"


def percent(x: float) -> str:
    return f"{100 * x:.0f} %"


def whole(x: Any) -> int | None:
    return None if x is None or pd.isna(x) else int(x)


def population_text(model: Any) -> str:
    card = getattr(model, "card", None)
    if isinstance(card, dict):
        use = card.get("intended_use")
        pop = use.get("population") if isinstance(use, dict) else card.get("population")
        if isinstance(pop, str) and pop:
            return f" ({pop})"
    return ""


def risk_block(
    days: np.ndarray,
    daily: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    hidx: np.ndarray,
    personal: bool,
    settings: PolicySettings,
    with_daily: bool = True,
) -> dict:
    """The ``risk`` block: horizons with bands, and the daily curve when ``with_daily``."""

    def r(a: np.ndarray) -> list[float | None]:
        # Python floats and one finiteness mask: the same values as rounding
        # each numpy scalar, at a third of the cost on daily curves.
        finite = np.isfinite(a).tolist()
        return [round(x, 4) if f else None for x, f in zip(a.tolist(), finite, strict=True)]

    has_band = personal and np.isfinite(lower).any()
    horizons = []
    for h, j in zip(settings.horizons, hidx, strict=True):
        horizons.append(
            {
                "days": int(h),
                "risk": r(daily[[j]])[0],
                "lower": r(lower[[j]])[0] if has_band else None,
                "upper": r(upper[[j]])[0] if has_band else None,
            }
        )
    block: dict[str, Any] = {
        "kind": "personalised" if personal else "population",
        "horizons": horizons,
    }
    if with_daily:
        block["daily"] = {
            "days": days.astype(int).tolist(),
            "risk": r(daily),
            "lower": r(lower) if has_band else [],
            "upper": r(upper) if has_band else [],
        }
    block.update({
        "conditional_on": CONDITIONAL_ON,
        "band": (
            f"{100 * settings.band_level:.0f} % band: quantiles of the model's bootstrap "
            "ensemble (the model refitted on resampled patients), showing how much the "
            "estimate moves with the training data."
            if has_band
            else "No band: "
            + (
                "the model version has no bootstrap ensemble."
                if personal
                else "the population estimate is shown without a band."
            )
        ),
    })
    if not personal:
        block["label"] = POPULATION_LABEL
        block["conditional_on"] = (
            "Population estimate, not personalised: the share of the model's training "
            "episodes whose benefit waned within H days, among those still without waning "
            "this long after their session (a smooth interval-censored estimate)."
        )
    return block


def _booking_text(
    sugg: dict[str, np.ndarray], i: int, by: pd.Timestamp, thr: float, settings: PolicySettings
) -> str:
    """The booking sentence: due now (and why), or by a date with the risk by then."""
    risk_at = float(sugg["risk_at"][i])
    if sugg["due"][i] and sugg["raw"][i] > 0:
        # Due because the longest interval has passed, not because of the risk; the risk
        # "by then" (today) is no figure to quote, the week ahead is.
        text = (
            f"Book the next session now (by {human_date(by)}): {settings.max_interval_days // 7}"
            " weeks after the last session, the longest interval the model reports, have "
            "passed; risk that the benefit has waned within 7 days is "
            f"{percent(float(sugg['risk_week'][i]))}"
        )
    elif sugg["due"][i]:
        text = (
            f"Book the next session now (by {human_date(by)}): the risk that the benefit has "
            f"waned is already above the {percent(thr)} threshold"
        )
        if sugg["clamp"][i] == "min":
            text += f" (not sooner than {settings.min_interval_days} days after the last session)"
    elif sugg["clamp"][i] == "max":
        text = (
            f"Book the next session by {human_date(by)}; risk that the benefit has waned by then "
            f"is {percent(risk_at)} ({settings.max_interval_days // 7} weeks after the last "
            "session is the longest interval the model reports)"
        )
    elif sugg["clamp"][i] == "min":
        text = (
            f"Book the next session by {human_date(by)}; risk that the benefit has waned by then "
            f"is {percent(risk_at)} (not sooner than {settings.min_interval_days} days after the "
            "last session)"
        )
    else:
        text = (
            f"Book the next session by {human_date(by)}; risk that the benefit has waned by then "
            f"is {percent(risk_at)}"
        )
    return text


def suggestion_block(
    c: dict,
    i: int,
    sugg: dict[str, np.ndarray],
    base: str,
    personal: bool,
    population: bool,
    as_of: pd.Timestamp,
    settings: PolicySettings,
) -> dict:
    thr = float(c["threshold"])
    empty = {
        "session_by": None,
        "window_start": None,
        "window_end": None,
        "threshold": round(thr, 3),
        "basis": None,
    }
    if not (personal or population):
        reasons = {
            "no_treatment": "No maintenance date is suggested: there is no session on record.",
            "not_in_response": (
                f"No maintenance date is suggested: {not_in_response_clause(c)}; review the "
                "treatment plan."
            ),
            "insufficient_data": (
                "No maintenance date is suggested: the data are insufficient for a "
                "personalised forecast, and the model version's population estimate does "
                "not reach this long after a session."
            ),
        }
        return {**empty, "rationale": reasons.get(base, "No maintenance date is suggested.")}
    if population and not c.get("n_prev_episodes") and not in_response_now(c):
        # No benefit has been measured yet (mid-induction, or the first response
        # unknown): a maintenance date would plan around a benefit not shown.
        return {
            **empty,
            "rationale": "No maintenance date is suggested: no response to treatment has been "
            "measured yet, so there is no benefit to maintain.",
        }
    by = as_of + pd.Timedelta(days=int(sugg["session_by"][i]))
    ws = as_of + pd.Timedelta(days=int(sugg["window_start"][i]))
    text = _booking_text(sugg, i, by, float(c["threshold"]), settings)
    if population:
        text += "; population estimate, not personalised"
    return {
        "session_by": iso_day(by),
        "window_start": iso_day(ws),
        "window_end": iso_day(by),
        "threshold": round(thr, 3),
        "basis": "personalised" if personal else "population",
        "rationale": text + ".",
    }


def si_waning_text(c: dict) -> str | None:
    """``"C-SSRS ... level 4 on <date>"`` when suicidal ideation ended the benefit, else None."""
    parts = []
    if pd.notna(c.get("waned_cssrs")):
        parts.append(f"C-SSRS screener ideation level {whole(c['waned_cssrs'])}")
    if pd.notna(c.get("waned_item9")):
        parts.append(f"PHQ-9 item 9 answered {whole(c['waned_item9'])}")
    if not c.get("waned_seen") or not parts:
        return None
    return " and ".join(parts) + f" on {iso_day(c['waned_date'])}"


def not_in_response_clause(c: dict) -> str:
    """Why status not_in_response applies, as a clause that agrees with ``current``.

    The status comes from the last session's episode (no response, or waning
    seen since); ``current.response_state`` describes the latest PHQ-9 only.
    The clause names the measured cause so that the two never read as a
    contradiction (e.g. waning by suicidal ideation while the PHQ-9 is still
    in response, or a later score back in response after a non-response).
    """
    si = si_waning_text(c)
    if si is not None:
        out = f"suicidal ideation re-emerged since the last session ({si})"
        if c.get("waned_symptoms"):
            out += f" and PHQ-9 {whole(c['waned_phq9'])} is no longer in response"
        return out
    if c["waned_seen"]:
        return (
            f"the benefit has waned since the last session (PHQ-9 {whole(c['waned_phq9'])} "
            f"on {iso_day(c['waned_date'])}, no longer in response)"
        )
    if c["response_status"] == "not_responded":
        return (
            f"the last session ({iso_day(c['last_session'])}) did not lead to response (PHQ-9 "
            f"{whole(c['response_phq9'])} on {iso_day(c['response_date'])})"
        )
    return (
        f"the latest PHQ-9 since the last session ({whole(c['latest_phq9'])} on "
        f"{iso_day(c['latest_phq9_date'])}) is not in response"
    )


def in_response_now(c: dict) -> bool:
    return c["response_state"] in ("in_response", "in_remission")


def _safety_reason(c: dict, safety: dict) -> str:
    """The reason of a safety status: the most severe flag in force, and how many more."""
    worst = [t for t in safety["triggered_by"] if t["level"] == safety["level"]]
    pick = worst[-1] if worst else None
    kind = "An urgent" if safety["level"] == URGENT else "A review"
    where = ""
    if pick:
        when = (
            "since the last session"
            if pick["since_last_session"] or not c["has_session"]
            else "before the last session, with no negative screen since"
        )
        where = f" ({pick['answer']} on {pick['date']}, {when})"
    more = len(safety["triggered_by"]) - 1
    extra = (
        f"; {more} further flagged answer{'s' if more > 1 else ''} listed under safety"
        if more > 0
        else ""
    )
    return (
        f"{kind} suicidal-ideation flag is in force{where}{extra}. Clinical "
        "review of the suicidal-ideation answer comes before any maintenance planning."
    )


def _insufficient_reason(c: dict) -> str:
    """Why no personalised forecast applies: which data are missing."""
    population = "the risks shown, if any, are a population estimate, not personalised."
    if pd.isna(c["baseline_phq9"]):
        return (
            "No baseline PHQ-9 (the last score on or before the first induction session, "
            "within the baseline window), so response cannot be measured; " + population
        )
    if c["response_status"] == "pending":
        return (
            f"No PHQ-9 since the last session on {iso_day(c['last_session'])} yet, so the "
            "response to it is not known; " + population
        )
    if c["response_status"] == "no_assessment":
        later = ""
        if pd.notna(c["latest_phq9_date"]) and pd.Timestamp(c["latest_phq9_date"]) > (
            pd.Timestamp(c["last_session"])
        ):
            later = (
                f" (the next came later: PHQ-9 {whole(c['latest_phq9'])} on "
                f"{iso_day(c['latest_phq9_date'])}, "
                f"{'in response' if in_response_now(c) else 'not in response'})"
            )
        return (
            f"No PHQ-9 within the response window after the last session on "
            f"{iso_day(c['last_session'])}{later}, so the response to that session was "
            "not measured; " + population
        )
    return (
        f"Only {int(c['n_phq9'])} PHQ-9 score{'' if int(c['n_phq9']) == 1 else 's'} on "
        "record; too few for a personalised forecast; " + population
    )


def _not_in_response_reason(c: dict, rule: str) -> str:
    """Why the benefit is not present: SI re-emerged, waning seen, or no response."""
    si = si_waning_text(c)
    if si is not None:
        phq = (
            f"; the PHQ-9 ({whole(c['latest_phq9'])} on {iso_day(c['latest_phq9_date'])}) is "
            "still in response"
            if in_response_now(c)
            else ""
        )
        return (
            f"Suicidal ideation re-emerged since the last session ({si}), which counts as "
            f"the benefit having waned{phq}. Review the suicidal-ideation answer and the "
            "treatment plan."
        )
    if c["waned_seen"]:
        return (
            f"The benefit has visibly waned since the last session: PHQ-9 "
            f"{whole(c['waned_phq9'])} on {iso_day(c['waned_date'])}; {rule}. Review the "
            "treatment plan."
        )
    if c["response_status"] == "not_responded":
        later = (
            f" The latest PHQ-9 ({whole(c['latest_phq9'])} on "
            f"{iso_day(c['latest_phq9_date'])}) is in response, but the response to a "
            "session is measured at its first PHQ-9."
            if in_response_now(c)
            else ""
        )
        return (
            f"The last session ({iso_day(c['last_session'])}) did not lead to response: PHQ-9 "
            f"{whole(c['response_phq9'])} on {iso_day(c['response_date'])}; {rule}.{later} "
            "Review the treatment plan."
        )
    return (
        f"Not in response since the last session ({iso_day(c['last_session'])}): PHQ-9 "
        f"{whole(c['latest_phq9'])} on {iso_day(c['latest_phq9_date'])}; {rule}. Review the "
        "treatment plan."
    )


def status_reason(
    st: str, base: str, c: dict, sugg: dict[str, np.ndarray], i: int, safety: dict, frac: float
) -> str:
    """One explanatory sentence (or two) for every status, with the measured numbers."""
    if st in SAFETY_STATUSES:
        return _safety_reason(c, safety)
    if st == "no_treatment":
        return "No ketamine session is on record by this date, so there is no benefit to forecast."
    if st == "insufficient_data":
        return _insufficient_reason(c)
    b = whole(c["baseline_phq9"])
    cut = whole(np.floor(c["response_threshold"])) if pd.notna(c["response_threshold"]) else None
    rule = f"response means a PHQ-9 at or below {cut} ({percent(frac)} of the baseline {b})"
    if st == "not_in_response":
        return _not_in_response_reason(c, rule)
    if st == "session_due":
        if sugg["raw"][i] == 0:
            why = "the forecast risk that the benefit has waned exceeds the threshold already"
        else:
            why = "the longest interval after the last session has been reached"
        return f"{responded_clause(c, rule)}, but {why}: a session is due now."
    return f"{responded_clause(c, rule)}; the suggestion follows the personalised forecast."


def pre_session_basis(c: dict) -> str | None:
    """``"the pre-session PHQ-9 7 of 2026-05-18"`` when the last session's response
    rests on the score taken at or before it (a booster given in response), else None."""
    day, last = c.get("response_date"), c.get("last_session")
    if not c.get("has_session") or day is None or pd.isna(day) or pd.Timestamp(day) > last:
        return None
    return f"the pre-session PHQ-9 {whole(c['response_phq9'])} of {iso_day(day)}"


def responded_clause(c: dict, rule: str) -> str:
    """The first clause of routine / session_due, true to ``current.response_state``.

    The forecast applies from the session's response until waning is seen;
    a latest score above the response threshold but below the waning
    cut-off is neither "in response" nor "waned", and is said as such. A
    response read before a booster says so.
    """
    latest = f"PHQ-9 {whole(c['latest_phq9'])} on {iso_day(c['latest_phq9_date'])}"
    basis = pre_session_basis(c)
    if basis is not None:
        since = pd.Timestamp(c["latest_phq9_date"]) > pd.Timestamp(c["last_session"])
        state = "in response" if in_response_now(c) else "above the response threshold"
        # Without a later score the pre-session one is the latest: nothing more to say.
        later = f"; latest {latest}, {state}" if since else "; no PHQ-9 since the session yet"
        return (
            f"In response at the last session on {iso_day(c['last_session'])} ({basis}"
            f"{later}; {rule})"
        )
    if in_response_now(c):
        return f"In response after the last session ({latest}; {rule})"
    return (
        f"Responded after the last session (PHQ-9 {whole(c['response_phq9'])} on "
        f"{iso_day(c['response_date'])}); the latest score ({latest}) is above the response "
        f"threshold but not counted as waned ({rule})"
    )
