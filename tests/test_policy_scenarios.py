"""Hand-written patient histories with the status and date bounds a clinician expects.

Every scenario is a small canonical cohort built by hand (days relative to
``AS_OF``); the model is the session's small landmark model (tests/fixtures/policy.py).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from forecast.bundle import HAZARD_FAMILIES
from forecast.policy import PolicySettings, forecast_queries
from tests.fixtures.policy import AS_OF, all_strings, build_history, responder, risks_monotone

FORBIDDEN = re.compile(
    r"\b(no|low|minimal|negligible) (suicide |suicidal )?risk\b|\bsafe\b|\bcleared\b|"
    r"\bnot at risk\b|\bno danger\b",
    re.IGNORECASE,
)


def _patient(pid: str) -> dict:
    return {"pid": pid}


def _answer(model, cohort, pid: str, as_of=AS_OF, threshold=None, settings=None) -> dict:
    q = pd.DataFrame({"patient_id": [pid], "as_of": [as_of]})
    if threshold is not None:
        q["threshold"] = threshold
    return forecast_queries(cohort, model, q, settings or PolicySettings())[0]


def _date(s: str | None) -> pd.Timestamp:
    assert s is not None
    return pd.Timestamp(s)


def _check_common(a: dict) -> None:
    """Invariants every answer must satisfy."""
    assert a["decision_support"] is True
    assert a["status_reason"]
    assert a["status_reason"].endswith(".")
    assert a["safety"]["statement"]
    assert "not a suicide-risk assessment" in a["safety"]["statement"]
    assert any("not a suicide-risk assessment" in c for c in a["caveats"])
    for text in all_strings(a):
        assert not FORBIDDEN.search(text), text
    assert risks_monotone(a)
    sugg = a["suggestion"]
    if sugg["session_by"] is not None:
        by = _date(sugg["session_by"])
        last = _date(a["last_session"]["date"])
        as_of = _date(a["as_of"])
        s = PolicySettings()
        lo = max(as_of, last + pd.Timedelta(days=s.min_interval_days))
        hi = max(as_of, last + pd.Timedelta(days=s.max_interval_days))
        assert lo <= by <= hi
        assert as_of <= _date(sugg["window_start"]) <= by == _date(sugg["window_end"])
        assert sugg["rationale"]


@pytest.fixture(scope="module")
def flat_and_rising(policy_model):
    s1, a1 = responder("FLAT", after=((-7, 6), (0, 6)))
    s2, a2 = responder("RISE", after=((-7, 4), (0, 9)))
    cohort = build_history([_patient("FLAT"), _patient("RISE")], s1 + s2, a1 + a2)
    return cohort


def test_flat_responder_is_routine_within_bounds(policy_model, flat_and_rising):
    a = _answer(policy_model, flat_and_rising, "FLAT")
    _check_common(a)
    assert a["status"] in ("routine", "session_due")
    assert a["safety"]["level"] is None
    assert a["current"]["response_state"] in ("in_response", "in_remission")
    assert a["risk"]["kind"] == "personalised"
    assert a["days_since_session"] == 14
    assert a["model_version"] == policy_model.version
    # Horizons of the contract, with a band around the point risk.
    assert [h["days"] for h in a["risk"]["horizons"]] == [7, 14, 28, 56, 84]
    for h in a["risk"]["horizons"]:
        assert h["lower"] <= h["risk"] <= h["upper"]
    assert 1 <= len(a["drivers"]) <= 5
    for d in a["drivers"]:
        assert d["direction"] in ("shortens", "lengthens")
        assert d["size"] > 0
        # a time ratio above 1 (AFT kinds) or a hazard ratio below 1 lengthens the benefit
        hazard = policy_model.bundle.family in HAZARD_FAMILIES
        assert (d["size"] < 1 if hazard else d["size"] > 1) == (d["direction"] == "lengthens")
        assert d["size_meaning"].startswith("hazard ratio" if hazard else "time ratio")


def test_rising_phq9_gets_an_earlier_date_than_flat(policy_model, flat_and_rising):
    flat = _answer(policy_model, flat_and_rising, "FLAT")
    rise = _answer(policy_model, flat_and_rising, "RISE")
    _check_common(rise)
    assert rise["risk"]["horizons"][2]["risk"] > flat["risk"]["horizons"][2]["risk"]
    assert _date(rise["suggestion"]["session_by"]) < _date(flat["suggestion"]["session_by"])


@pytest.mark.parametrize(
    ("extra", "level", "needle"),
    [
        ({"phq9": 6, "item9": 1}, "review", "item 9"),
        ({"phq9": 6, "item9": 0, "cssrs": 2}, "review", "ideation level 2"),
        ({"phq9": 6, "item9": 0, "cssrs": 4}, "urgent", "ideation level 4"),
        ({"phq9": 6, "item9": 0, "cssrs": 0, "behavior": 1}, "urgent", "behaviour"),
        # A C-SSRS-only screener (no PHQ-9 that day) since the session.
        ({"cssrs": 2}, "review", "ideation level 2"),
    ],
)
def test_suicidal_ideation_overrides_with_the_triggering_answer(policy_model, extra, level, needle):
    sessions, assessments = responder("SI", after=((-7, 6),))
    assessments.append({"pid": "SI", "day": -2, **extra})
    cohort = build_history([_patient("SI")], sessions, assessments)
    a = _answer(policy_model, cohort, "SI")
    _check_common(a)
    assert a["status"] == {"urgent": "urgent_review", "review": "safety_review"}[level]
    assert a["safety"]["level"] == level
    day = (AS_OF - pd.Timedelta(days=2)).strftime("%Y-%m-%d")
    assert needle in a["status_reason"]
    assert day in a["status_reason"]
    assert {"date": day}.items() <= a["safety"]["triggered_by"][-1].items()
    assert any(needle in r for r in a["safety"]["reasons"])
    # The forecast is still shown to the clinician, but the timing waits for the review.
    assert a["suggestion"]["rationale"].startswith("Review the suicidal-ideation answer")


def test_flag_before_the_last_session_stays_until_a_negative_screen(policy_model):
    # Item 9 = 2 and C-SSRS 3 before the last session; the PHQ-9s since carry item 9 = 0
    # but no C-SSRS: the C-SSRS flag is still open ("no negative screen since").
    sessions, assessments = responder("OLD", after=((-7, 6), (0, 6)))
    assessments.append({"pid": "OLD", "day": -20, "phq9": 8, "item9": 2, "cssrs": 3})
    old_day = (AS_OF - pd.Timedelta(days=20)).strftime("%Y-%m-%d")
    a = _answer(policy_model, build_history([_patient("OLD")], sessions, assessments), "OLD")
    _check_common(a)
    assert a["status"] == "safety_review"
    assert a["safety"]["level"] == "review"
    (flag,) = a["safety"]["triggered_by"]
    assert flag["date"] == old_day
    assert flag["since_last_session"] is False
    assert flag["negative_screen_since"] is None
    assert a["safety"]["reasons"] == [
        f"C-SSRS screener ideation level 3 on {old_day} (before the last session); "
        "no negative screen since"
    ]
    assert "before the last session, with no negative screen since" in a["status_reason"]
    assert "No suicidal-ideation rule" not in a["safety"]["statement"]
    assert a["suggestion"]["rationale"].startswith("Review the suicidal-ideation answer")

    # A negative C-SSRS screen after it closes the flag: the answer says so.
    screened = [*assessments, {"pid": "OLD", "day": -7, "cssrs": 0}]
    b = _answer(policy_model, build_history([_patient("OLD")], sessions, screened), "OLD")
    _check_common(b)
    assert b["safety"]["level"] is None
    assert b["status"] in ("routine", "session_due")
    assert b["safety"]["triggered_by"] == []
    closed_by = (AS_OF - pd.Timedelta(days=7)).strftime("%Y-%m-%d")
    assert b["safety"]["closed"] == [
        {
            "date": old_day,
            "answer": "C-SSRS screener ideation level 3",
            "level": "review",
            "closed_by": closed_by,
        }
    ]
    assert "followed by a negative screen" in b["safety"]["statement"]

    # Item 9 = 0 alone does not close a flag the C-SSRS raised, but closes an item-9 flag.
    item9_only = [x for x in assessments if x["day"] != -20]
    item9_only.append({"pid": "OLD", "day": -20, "phq9": 8, "item9": 2})
    c = _answer(policy_model, build_history([_patient("OLD")], sessions, item9_only), "OLD")
    assert c["safety"]["level"] is None
    # (closed by the first later item 9 = 0: the PHQ-9 on the session day)
    session_day = (AS_OF - pd.Timedelta(days=14)).strftime("%Y-%m-%d")
    assert [x["closed_by"] for x in c["safety"]["closed"]] == [session_day]

    # A flag on the session day itself counts as since the session (no time of day).
    assessments[-1]["day"] = -14
    assessments = [x for x in assessments if not (x["day"] == -14 and "cssrs" not in x)]
    d = _answer(policy_model, build_history([_patient("OLD")], sessions, assessments), "OLD")
    assert d["status"] == "safety_review"
    assert d["safety"]["triggered_by"][0]["since_last_session"] is True


def test_relapse_after_response_is_not_in_response_with_numbers(policy_model):
    sessions, assessments = responder("REL", after=((-7, 6), (-1, 16)))
    cohort = build_history([_patient("REL")], sessions, assessments)
    a = _answer(policy_model, cohort, "REL")
    _check_common(a)
    assert a["status"] in ("not_in_response", "session_due")
    assert a["status"] == "not_in_response"
    assert "waned" in a["status_reason"]
    assert "16" in a["status_reason"]
    assert "20" in a["status_reason"]
    assert "10" in a["status_reason"]  # 50 % of the baseline
    assert a["risk"] is None
    assert a["current"]["phq9"] == 16
    assert a["current"]["change_from_baseline"] == -4


def test_never_responded_patient(policy_model):
    sessions = [("NR", -40 + k, "induction") for k in (0, 3, 6, 9)]
    assessments = [
        {"pid": "NR", "day": -40, "phq9": 22},
        {"pid": "NR", "day": -25, "phq9": 18},
        {"pid": "NR", "day": -10, "phq9": 19},
    ]
    cohort = build_history([_patient("NR")], sessions, assessments)
    a = _answer(policy_model, cohort, "NR")
    _check_common(a)
    assert a["status"] == "not_in_response"
    assert "did not lead to response" in a["status_reason"]
    for number in ("18", "22", "11", "50 %"):
        assert number in a["status_reason"]
    assert a["suggestion"]["session_by"] is None
    assert a["risk"] is None


def test_no_sessions_is_no_treatment_but_safety_still_applies(policy_model):
    assessments = [
        {"pid": "NS", "day": -10, "phq9": 18},
        {"pid": "NS2", "day": -3, "phq9": 18, "item9": 2},
    ]
    cohort = build_history([_patient("NS"), _patient("NS2")], [], assessments)
    a = _answer(policy_model, cohort, "NS")
    _check_common(a)
    assert a["status"] == "no_treatment"
    assert a["last_session"] is None
    assert a["days_since_session"] is None
    assert a["risk"] is None
    assert a["suggestion"]["session_by"] is None
    b = _answer(policy_model, cohort, "NS2")
    _check_common(b)
    assert b["status"] == "safety_review"
    assert "item 9" in b["status_reason"]


def test_no_baseline_is_insufficient_data_with_population_estimate(policy_model):
    sessions = [("NB", -60 + k, "induction") for k in (0, 3, 6)]
    assessments = [
        {"pid": "NB", "day": -45, "phq9": 6},  # first PHQ-9 only after the induction
        {"pid": "NB", "day": -5, "phq9": 7},
    ]
    cohort = build_history([_patient("NB")], sessions, assessments)
    a = _answer(policy_model, cohort, "NB")
    _check_common(a)
    assert a["status"] == "insufficient_data"
    assert "baseline" in a["status_reason"]
    assert a["risk"]["kind"] == "population"
    assert a["risk"]["label"] == "population estimate, not personalised"
    # No response has ever been measured: no benefit to maintain, so no date at all.
    assert a["suggestion"]["session_by"] is None
    assert "no response to treatment has been measured yet" in a["suggestion"]["rationale"]
    assert a["drivers"] == []


def test_a_booster_given_in_response_is_forecast_from_its_check_in_score(policy_model):
    # The booster 3 days ago had its PHQ-9 (8, baseline 20) taken at check-in; none since.
    sessions, assessments = responder("PEND", last_session=-3, after=())
    a = _answer(policy_model, build_history([_patient("PEND")], sessions, assessments), "PEND")
    _check_common(a)
    assert a["status"] in ("routine", "session_due")
    assert a["risk"]["kind"] == "personalised"
    check_in = (AS_OF - pd.Timedelta(days=3)).strftime("%Y-%m-%d")
    assert f"pre-session PHQ-9 8 of {check_in}" in a["status_reason"]
    assert "no PHQ-9 since the session yet;" in a["status_reason"]
    assert "yet, in response" not in a["status_reason"]  # no dangling state after "yet"
    assert any("pre-session PHQ-9 8" in x for x in a["caveats"])
    assert a["current"]["response_state"] in ("in_response", "in_remission")
    assert _date(a["suggestion"]["session_by"]) >= AS_OF + pd.Timedelta(days=4)


def test_as_of_before_any_assessment_after_the_session(policy_model):
    # No score at check-in: the response to the booster is not known yet.
    sessions, assessments = responder("PEND", last_session=-3, after=())
    assessments = [x for x in assessments if x["day"] != -3]
    cohort = build_history([_patient("PEND")], sessions, assessments)
    a = _answer(policy_model, cohort, "PEND")
    _check_common(a)
    assert a["status"] == "insufficient_data"
    assert "not known" in a["status_reason"]
    assert a["risk"]["kind"] == "population"
    # An earlier response was measured: a population date, labelled as such, which
    # still respects the minimum interval after the session.
    assert a["suggestion"]["basis"] == "population"
    assert "population estimate" in a["suggestion"]["rationale"]
    assert _date(a["suggestion"]["session_by"]) >= AS_OF + pd.Timedelta(days=4)


def test_booster_yesterday_respects_the_minimum_interval(policy_model):
    # Response measured today, the day after the booster.
    sessions, assessments = responder("YEST", last_session=-1, after=((0, 6),))
    cohort = build_history([_patient("YEST")], sessions, assessments)
    a = _answer(policy_model, cohort, "YEST", threshold=0.01)
    _check_common(a)
    assert a["status"] in ("routine", "session_due")
    assert a["days_since_session"] == 1
    assert _date(a["suggestion"]["session_by"]) == AS_OF + pd.Timedelta(days=6)
    assert "not sooner than 7 days" in a["suggestion"]["rationale"]


def test_long_after_the_session_is_due_today(policy_model):
    # Induction ended 81 days before AS_OF; asked 10 days later, 91 days have passed.
    sessions, assessments = responder("LONG", last_session=-200, after=((-40, 5), (5, 6)))
    cohort = build_history([_patient("LONG")], sessions, assessments)
    as_of = AS_OF + pd.Timedelta(days=10)
    # a threshold the risk does not reach: the longest-interval rule alone makes it due
    a = _answer(policy_model, cohort, "LONG", as_of=as_of, threshold=0.999)
    _check_common(a)
    assert a["days_since_session"] == 91
    assert a["status"] == "session_due"
    assert a["suggestion"]["session_by"] == as_of.strftime("%Y-%m-%d")
    assert "longest interval" in a["status_reason"]
    # The suggestion gives the same reason, never "risk above the threshold".
    assert "longest interval the model reports, have passed" in a["suggestion"]["rationale"]
    assert "already above" not in a["suggestion"]["rationale"]
    # The risk it quotes is the answer's own 7-day risk, never a "0 %" for today.
    week = next(h["risk"] for h in a["risk"]["horizons"] if h["days"] == 7)
    quoted = re.search(r"waned within 7 days is (\d+) %\.$", a["suggestion"]["rationale"])
    assert quoted is not None
    assert abs(int(quoted.group(1)) - 100 * week) <= 0.5 + 1e-6
    assert "by then is 0 %" not in a["suggestion"]["rationale"]


def test_a_late_first_score_is_named_and_a_responder_keeps_a_labelled_date(policy_model):
    # Induction 90-84 days ago, no score until 44 days after the last session (in
    # response): past the 42-day window of a session after the first induction session.
    sessions = [("LATE", -90 + k, "induction") for k in (0, 3, 6)]
    assessments = [{"pid": "LATE", "day": -90, "phq9": 20}, {"pid": "LATE", "day": -40, "phq9": 7}]
    a = _answer(policy_model, build_history([_patient("LATE")], sessions, assessments), "LATE")
    _check_common(a)
    assert a["status"] == "insufficient_data"
    day = (AS_OF - pd.Timedelta(days=40)).strftime("%Y-%m-%d")
    assert f"(the next came later: PHQ-9 7 on {day}, in response)" in a["status_reason"]
    assert a["current"]["response_state"] == "in_response"
    # In response now: a population date, labelled, not "no response measured".
    assert a["suggestion"]["basis"] == "population"
    assert "no response to treatment" not in a["suggestion"]["rationale"]


def test_a_first_score_weeks_after_the_last_session_is_its_response(policy_model):
    """Scored 20 days after the last induction session (within its 42-day window), in
    response: a personalised answer resting on that score, not a population estimate."""
    sessions = [("WEEKS", -60 + k, "induction") for k in (0, 3, 6)]
    assessments = [{"pid": "WEEKS", "day": -60, "phq9": 20},
                   {"pid": "WEEKS", "day": -34, "phq9": 7}]
    a = _answer(policy_model, build_history([_patient("WEEKS")], sessions, assessments), "WEEKS")
    _check_common(a)
    assert a["risk"]["kind"] == "personalised"
    assert a["status"] in ("routine", "session_due")
    assert a["current"]["response_state"] == "in_response"
    assert a["suggestion"]["basis"] != "population"


def test_item9_zero_everywhere_never_reads_as_a_clearance(policy_model):
    pids = ["Z1", "Z2", "Z3", "Z4"]
    s1, a1 = responder("Z1", after=((-7, 3), (0, 2)))  # remission
    s2, a2 = responder("Z2", after=((-7, 6), (-1, 15)))  # relapse
    s3, a3 = responder("Z3", last_session=-2, after=())
    a3 = [x for x in a3 if x["day"] != -2]  # pending: no score at or after the booster
    a4 = [{"pid": "Z4", "day": -3, "phq9": 12}]  # untreated
    for x in a1 + a2 + a3 + a4:
        if x.get("phq9") is not None:
            x["item9"] = 0
            x["cssrs"] = 0
    cohort = build_history([_patient(p) for p in pids], s1 + s2 + s3, a1 + a2 + a3 + a4)
    q = pd.DataFrame({"patient_id": pids, "as_of": AS_OF})
    answers = forecast_queries(cohort, policy_model, q)
    assert {a["status"] for a in answers} >= {
        "not_in_response",
        "insufficient_data",
        "no_treatment",
    }
    for a in answers:
        _check_common(a)
        assert a["safety"]["level"] is None
        assert "not a suicide-risk assessment" in a["safety"]["statement"]


def test_lower_threshold_never_gives_a_later_date(policy_model, flat_and_rising):
    thresholds = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45]
    q = pd.DataFrame(
        {
            "patient_id": ["FLAT"] * len(thresholds) + ["RISE"] * len(thresholds),
            "as_of": AS_OF,
            "threshold": thresholds * 2,
        }
    )
    answers = forecast_queries(flat_and_rising, policy_model, q)
    for pid in ("FLAT", "RISE"):
        dates = [_date(a["suggestion"]["session_by"]) for a in answers if a["patient_id"] == pid]
        assert all(x <= y for x, y in zip(dates, dates[1:], strict=False))
        assert dates[0] < dates[-1]
        used = [a["suggestion"]["threshold"] for a in answers if a["patient_id"] == pid]
        assert used == thresholds


def test_history_after_as_of_is_ignored(policy_model):
    sessions, assessments = responder("FUT", after=((-7, 6), (0, 6)))
    base = build_history([_patient("FUT")], sessions, assessments)
    later = build_history(
        [_patient("FUT")],
        [*sessions, ("FUT", 3, "maintenance")],
        [*assessments, {"pid": "FUT", "day": 2, "phq9": 20, "item9": 3, "cssrs": 5}],
    )
    a, b = _answer(policy_model, base, "FUT"), _answer(policy_model, later, "FUT")
    assert a == b


def test_no_induction_on_record_is_insufficient_data(policy_model):
    sessions = [("MAINT", -10, "maintenance")]
    assessments = [{"pid": "MAINT", "day": -10, "phq9": 15}, {"pid": "MAINT", "day": -3, "phq9": 5}]
    cohort = build_history([_patient("MAINT")], sessions, assessments)
    a = _answer(policy_model, cohort, "MAINT")
    _check_common(a)
    assert a["status"] == "insufficient_data"
    assert "baseline" in a["status_reason"]


def test_median_is_reported_or_explained(policy_model, flat_and_rising):
    for pid in ("FLAT", "RISE"):
        a = _answer(policy_model, flat_and_rising, pid)
        if a["median_remaining_days"] is None:
            assert "50 %" in a["median_reason"]
        else:
            daily = np.array(a["risk"]["daily"]["risk"])
            assert daily[a["median_remaining_days"] - 1] >= 0.5


def test_missing_category_is_named_in_the_caveats(policy_model):
    sessions, assessments = responder("NODX", after=((-7, 6), (0, 6)))
    cohort = build_history([{"pid": "NODX", "diagnosis": None}], sessions, assessments)
    a = _answer(policy_model, cohort, "NODX")
    _check_common(a)
    (note,) = [c for c in a["caveats"] if "average effect" in c]
    # Every input the history lacks is named: the diagnosis, and the C-SSRS never asked.
    assert note.startswith("Not in this history: diagnosis, C-SSRS screen.")
    s2, a2 = responder("DX", after=((-7, 6), (0, 6)))
    for x in a2:
        x["cssrs"] = 0  # a complete record: every optional input present
    b = _answer(policy_model, build_history([_patient("DX")], s2, a2), "DX")
    assert not any("average effect" in c for c in b["caveats"])
    # A totals-only history names each input it lacks.
    s3, a3 = responder("TOT", after=((-7, 6), (0, 6)))
    for x in a3:
        x["total_only"] = True
    tot = _answer(policy_model, build_history([_patient("TOT")], s3, a3), "TOT")
    (note,) = [c for c in tot["caveats"] if "average effect" in c]
    for name in ("PHQ-9 item 9 answer", "C-SSRS screen"):
        assert name in note


@pytest.mark.parametrize(
    ("history", "underlying"),
    [
        ("never_responded", "not_in_response"),
        ("pending", "insufficient_data"),
        ("no_baseline", "insufficient_data"),
    ],
)
def test_safety_is_evaluated_when_no_forecast_applies(policy_model, history, underlying):
    if history == "never_responded":
        sessions = [("S", -40 + k, "induction") for k in (0, 3, 6, 9)]
        assessments = [{"pid": "S", "day": -40, "phq9": 22}, {"pid": "S", "day": -25, "phq9": 18}]
    elif history == "pending":
        sessions, assessments = responder("S", last_session=-3, after=())
        assessments = [x for x in assessments if x["day"] != -3]  # no check-in score
    else:
        sessions = [("S", -60 + k, "induction") for k in (0, 3, 6)]
        assessments = [{"pid": "S", "day": -45, "phq9": 6}]
    flagged = [*assessments, {"pid": "S", "day": -1, "cssrs": 4, "behavior": 0}]
    plain = _answer(policy_model, build_history([_patient("S")], sessions, assessments), "S")
    assert plain["status"] == underlying
    a = _answer(policy_model, build_history([_patient("S")], sessions, flagged), "S")
    _check_common(a)
    assert a["status"] == "urgent_review"
    assert a["safety"]["level"] == "urgent"
    assert "intent or plan" in a["status_reason"]
    # The rest of the answer is the one of the underlying status.
    assert (a["risk"] is None) == (plain["risk"] is None)


def test_waning_by_suicidal_ideation_is_said_as_such(policy_model):
    # C-SSRS intent two days ago while the PHQ-9 total stays in response: the
    # benefit counts as waned (docs: outcomes), but "not in response" would be false.
    sessions, assessments = responder("SIW", after=((-7, 6),))
    assessments.append({"pid": "SIW", "day": -2, "phq9": 6, "item9": 0, "cssrs": 4})
    cohort = build_history([_patient("SIW")], sessions, assessments)
    day = (AS_OF - pd.Timedelta(days=2)).strftime("%Y-%m-%d")
    a = _answer(policy_model, cohort, "SIW")
    _check_common(a)
    assert a["status"] == "urgent_review"
    assert a["current"]["response_state"] in ("in_response", "in_remission")
    why = (
        "suicidal ideation re-emerged since the last session "
        f"(C-SSRS screener ideation level 4 on {day})"
    )
    assert why in a["suggestion"]["rationale"]
    for text in (a["status_reason"], a["suggestion"]["rationale"]):
        assert "not in response" not in text
    # Safety rules set so that level 2 raises no flag (a clinic's choice): the
    # underlying status is then shown, and it says the same.
    from forecast.instruments import SafetyRules

    assessments[-1]["cssrs"] = 2
    cohort = build_history([_patient("SIW")], sessions, assessments)
    settings = PolicySettings(safety_rules=SafetyRules(review_cssrs_ideation=3))
    b = _answer(policy_model, cohort, "SIW", settings=settings)
    _check_common(b)
    assert b["status"] == "not_in_response"
    assert b["safety"]["level"] is None
    assert b["status_reason"].startswith(
        "Suicidal ideation re-emerged since the last session "
        f"(C-SSRS screener ideation level 2 on {day})"
    )
    assert "is still in response" in b["status_reason"]
    assert "not in response" not in b["status_reason"] + b["suggestion"]["rationale"]


def test_symptom_texts_agree_with_the_current_response_state(policy_model):
    # Never responded at the first PHQ-9 after the session, in response later.
    sessions = [("LATE", -40 + k, "induction") for k in (0, 3, 6, 9)]
    assessments = [
        {"pid": "LATE", "day": -40, "phq9": 22},
        {"pid": "LATE", "day": -25, "phq9": 18},
        {"pid": "LATE", "day": -5, "phq9": 8},
    ]
    cohort = build_history([_patient("LATE")], sessions, assessments)
    a = _answer(policy_model, cohort, "LATE")
    _check_common(a)
    assert a["status"] == "not_in_response"
    assert a["current"]["response_state"] == "in_response"
    assert "did not lead to response" in a["status_reason"]
    assert "The latest PHQ-9 (8 on" in a["status_reason"]
    assert "the latest scores are not in response" not in a["suggestion"]["rationale"]
    assert "did not lead to response" in a["suggestion"]["rationale"]
    # In an episode, a latest score above the response cut but below 10 is not "in response".
    s2, a2 = responder("DRIFT", baseline=12, after=((-7, 5), (0, 8)))
    b = _answer(policy_model, build_history([_patient("DRIFT")], s2, a2), "DRIFT")
    _check_common(b)
    assert b["status"] in ("routine", "session_due")
    assert b["current"]["response_state"] == "not_in_response"
    assert not b["status_reason"].startswith("In response")
    assert "not counted as waned" in b["status_reason"]


@pytest.mark.parametrize(
    ("item9_start", "later", "needle"),
    [
        # Item 9 0 at the response, 1 later, PHQ-9 still in response: SI re-emerged.
        (
            0,
            {"phq9": 6, "item9": 1},
            "suicidal ideation re-emerged since the last session (PHQ-9 item 9 answered 1 on",
        ),
        # Item 9 already 1 at the response: the item-9 criterion does not apply, the
        # PHQ-9 of 16 is what ended the benefit.
        (1, {"phq9": 16, "item9": 1}, "the benefit has waned since the last session (PHQ-9 16"),
    ],
)
def test_waning_cause_follows_the_outcome_definition(policy_model, item9_start, later, needle):
    sessions, assessments = responder("I9", after=((-7, 6),), item9_after=item9_start)
    assessments.append({"pid": "I9", "day": -2, **later})
    a = _answer(policy_model, build_history([_patient("I9")], sessions, assessments), "I9")
    _check_common(a)
    assert a["status"] == "safety_review"  # item 9 >= 1 raises a review flag either way
    assert needle in a["suggestion"]["rationale"]
    assert ("suicidal ideation re-emerged" in a["suggestion"]["rationale"]) == (item9_start == 0)
