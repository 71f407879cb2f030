"""CDS Hooks prefetch, resource by resource (issue 19, part B).

An unreadable prefetched resource is left out alone and named in the card; the
rest is still used together. Before, one unreadable resource discarded the
whole prefetch, so a C-SSRS screen with ideation answered "yes" (a critical
card on its own) gave a routine card next to a PHQ-9 total sent with a
comparator. When what is left out could hold a suicidal-ideation answer, the
card is at least a warning asking for a review, never a routine info card.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from forecast.instruments import LOINC_PHQ9_ITEMS, LOINC_PHQ9_TOTAL, LOINC_SYSTEM
from service.cds_cards import UNREAD_SI_SUMMARY, cards_for
from tests.fixtures.clinic import (
    CDS_AUDIENCE,
    CDS_ISS,
    CDS_SECRET,
    LA,
    ROUTINE,
    bundle,
    cssrs_qr,
    ketamine_procedure,
    observation,
    phq9_panel,
    phq9_qr,
)
from tests.fixtures.service import client_for
from tests.test_cds import call, hook, token

CRITICAL_SUMMARY = "Suicidal-ideation answer on record"


def day(n: int) -> str:
    """``n`` days before today (UTC); negative: after today."""
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)).isoformat()


def card_of(c: Any, pid: str, *, observations=(), responses=(), procedures=()) -> dict[str, Any]:
    prefetch = {}
    for key, res in (
        ("observations", observations),
        ("responses", responses),
        ("procedures", procedures),
    ):
        if res:
            prefetch[key] = bundle(list(res), "searchset")
    r = call(c, hook(pid, prefetch), token())
    assert r.status_code == 200, r.get_data(as_text=True)
    (card,) = r.get_json()["cards"]
    return card


def ideation_yes(pid: str, when: str, rid: str = "c1") -> dict[str, Any]:
    """A C-SSRS screener with Q1-Q4 answered "yes" (a critical card by itself)."""
    return cssrs_qr(rid, pid, when, yes=(1, 2, 3, 4), behaviour=False)


def total_with_comparator(pid: str, when: str, rid: str = "t-lt") -> dict[str, Any]:
    return observation(
        rid, pid, when, LOINC_PHQ9_TOTAL, {"valueQuantity": {"value": 5, "comparator": "<"}}
    )


def item9(pid: str, when: str, rid: str = "o-i9", answer: int = 1) -> dict[str, Any]:
    return observation(
        rid,
        pid,
        when,
        LOINC_PHQ9_ITEMS[8],
        {"valueCodeableConcept": {"coding": [{"system": LOINC_SYSTEM, "code": LA[answer]}]}},
    )


def ehr_history(pid: str) -> dict[str, list[dict[str, Any]]]:
    """A history known only to the EHR: induction series and PHQ-9 answers (no SI)."""
    return {
        "procedures": [
            ketamine_procedure(f"{pid}-s{k}", pid, day(n), kind="induction")
            for k, n in enumerate((40, 37, 34, 31))
        ],
        "responses": [
            phq9_qr(f"{pid}-q0", pid, day(42), (2, 2, 2, 2, 2, 2, 2, 2, 0)),
            phq9_qr(f"{pid}-q1", pid, day(20), (1, 1, 1, 0, 1, 1, 0, 0, 0)),
        ],
    }


# --- one unreadable resource no longer hides a safety answer ----------------------------------
@pytest.mark.parametrize(
    ("bad", "named", "why"),
    [
        (total_with_comparator(ROUTINE, day(1)), "Observation/t-lt", "comparator"),
        (
            ketamine_procedure("p-bad", ROUTINE, "not-a-date"),
            "Procedure/p-bad",
            "performedDateTime",
        ),
    ],
)
def test_ideation_yes_stays_critical_beside_an_unreadable_resource(clinic_client, bad, named, why):
    c = clinic_client
    plain = card_of(c, ROUTINE)
    assert plain["indicator"] != "critical"
    alone = card_of(c, ROUTINE, responses=[ideation_yes(ROUTINE, day(1))])
    assert alone["indicator"] == "critical"
    key = "procedures" if bad["resourceType"] == "Procedure" else "observations"
    card = card_of(c, ROUTINE, responses=[ideation_yes(ROUTINE, day(1))], **{key: [bad]})
    assert card["indicator"] == "critical"
    assert card["summary"].startswith(CRITICAL_SUMMARY)
    assert "C-SSRS screener ideation level 4" in card["detail"]
    assert f"- {named}" in card["detail"]
    assert why in card["detail"]
    assert "could not be read or used and were" in card["detail"]
    assert "1 row(s) from the EHR's prefetch were used and not stored" in card["detail"]
    assert c.get(f"/api/v1/patients/{ROUTINE}").get_json()["assessments"][-1]["date"] == day(2)


def test_ehr_only_patient_with_ideation_and_unreadable_data_gets_the_critical_card(clinic_client):
    pid = "ehr-si"
    hist = ehr_history(pid)
    card = card_of(
        clinic_client,
        pid,
        responses=[*hist["responses"], ideation_yes(pid, day(1))],
        procedures=[*hist["procedures"], ketamine_procedure("p-bad", pid, "not-a-date")],
        observations=[total_with_comparator(pid, day(3))],
    )
    assert card["indicator"] == "critical"
    assert "- Procedure/p-bad" in card["detail"]
    assert "- Observation/t-lt" in card["detail"]
    assert "7 row(s) from the EHR's prefetch were used" in card["detail"]
    assert clinic_client.get(f"/api/v1/patients/{pid}").status_code == 404


def test_unreadable_resource_without_si_is_named_and_the_rest_used(clinic_client):
    c = clinic_client
    plain = card_of(c, ROUTINE)
    card = card_of(
        c,
        ROUTINE,
        observations=[total_with_comparator(ROUTINE, day(1))],
        responses=[phq9_qr("q-new", ROUTINE, day(1), (1, 0, 1, 0, 1, 0, 0, 0, 0))],
    )
    # A PHQ-9 total cannot hold an ideation answer: no review is asked for it.
    assert card["summary"] != UNREAD_SI_SUMMARY
    assert card["indicator"] == plain["indicator"]
    assert "si_data_unread" not in card["extension"]["org.kap-forecast.forecast"]
    assert "- Observation/t-lt: valueQuantity.comparator: got comparator '<'" in card["detail"]
    assert "1 row(s) from the EHR's prefetch were used" in card["detail"]


# --- what is left out could hold an ideation answer: at least a warning -----------------------
@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({**ideation_yes(ROUTINE, day(1)), "authored": "yesterday"}, "QuestionnaireResponse/c1"),
        ({**item9(ROUTINE, day(1)), "effectiveDateTime": "31/12"}, "Observation/o-i9"),
        (
            {**phq9_qr("q-bad", ROUTINE, day(1), (1,) * 9), "status": "done"},
            "QuestionnaireResponse/q-bad",
        ),
        (
            {**observation("pn", ROUTINE, "soon", "44249-1", {}), "hasMember": []},
            "Observation/pn",
        ),
        (
            {**observation("cs", ROUTINE, day(1), "93373-9", {}), "status": 7},
            "Observation/cs",
        ),
    ],
)
def test_unreadable_si_data_make_a_review_warning(clinic_client, bad, named):
    key = "responses" if bad["resourceType"] == "QuestionnaireResponse" else "observations"
    card = card_of(clinic_client, ROUTINE, **{key: [bad]})
    assert card["indicator"] == "warning"
    assert card["summary"] == UNREAD_SI_SUMMARY
    assert f"- {named}: " in card["detail"]
    assert "could not check them" in card["detail"]
    assert card["extension"]["org.kap-forecast.forecast"]["si_data_unread"] is True
    assert card["extension"]["org.kap-forecast.forecast"]["safety_level"] is None


def test_a_stored_flag_keeps_the_card_critical_with_unreadable_si_data(clinic_client):
    from tests.fixtures.clinic import URGENT

    bad = {**ideation_yes(URGENT, day(1)), "authored": "yesterday"}
    card = card_of(clinic_client, URGENT, responses=[bad])
    assert card["indicator"] == "critical"
    assert "- QuestionnaireResponse/c1: " in card["detail"]
    assert card["extension"]["org.kap-forecast.forecast"]["si_data_unread"] is True


# --- rows refused by the data contract are left out one by one --------------------------------
def test_refused_rows_are_left_out_one_by_one(clinic_client):
    c = clinic_client
    future = day(-3)  # after today: refused by the data contract, not by the FHIR mapping
    card = card_of(
        c,
        ROUTINE,
        responses=[
            phq9_qr("q-new", ROUTINE, day(1), (0, 0, 1, 0, 0, 0, 0, 0, 0)),
            phq9_qr("q-future", ROUTINE, future, (0, 0, 0, 0, 0, 0, 0, 0, 0)),
            cssrs_qr("c-future", ROUTINE, future, yes=(), behaviour=False),
        ],
    )
    # The row of the future date holds C-SSRS answers (all "no"): it could hold an
    # ideation answer, so a review is asked; the other row is used.
    assert card["summary"] == UNREAD_SI_SUMMARY
    assert card["indicator"] == "warning"
    assert "1 row(s) from the EHR's prefetch were used" in card["detail"]
    assert (
        f"- the assessment of {future} (from QuestionnaireResponse/q-future, "
        "QuestionnaireResponse/c-future): date:" in card["detail"]
    )


def test_refused_row_without_si_values_is_named_without_a_review(clinic_client):
    c = clinic_client
    plain = card_of(c, ROUTINE)
    card = card_of(
        c,
        ROUTINE,
        observations=[
            observation("t-future", ROUTINE, day(-3), LOINC_PHQ9_TOTAL, {"valueInteger": 4})
        ],
        responses=[phq9_qr("q-new", ROUTINE, day(1), (0, 0, 1, 0, 0, 0, 0, 0, 0))],
    )
    assert card["summary"] != UNREAD_SI_SUMMARY
    assert card["indicator"] == plain["indicator"]
    assert f"- the assessment of {day(-3)} (from Observation/t-future): date:" in card["detail"]
    assert "1 row(s) from the EHR's prefetch were used" in card["detail"]


def test_ideation_yes_stays_critical_beside_a_refused_row(clinic_client):
    card = card_of(
        clinic_client,
        ROUTINE,
        responses=[ideation_yes(ROUTINE, day(1))],
        observations=[
            observation("t-future", ROUTINE, day(-3), LOINC_PHQ9_TOTAL, {"valueInteger": 4})
        ],
    )
    assert card["indicator"] == "critical"
    assert "- the assessment of" in card["detail"]


def test_lone_item9_observation_is_never_a_routine_card(clinic_client):
    """A lone PHQ-9 item-9 "several days" after the last session.

    Today the data contract refuses its row (a PHQ-9 cannot be scored from one
    item), so the row is left out, named, and a review is asked (warning). Once
    forecast/ maps such an Observation to a row carrying only ``phq9_9`` (a
    change under way elsewhere), the row is used and the card is critical. Both
    are accepted here; a routine card is not.
    """
    card = card_of(clinic_client, ROUTINE, observations=[item9(ROUTINE, day(1))])
    assert card["indicator"] in ("warning", "critical")
    if card["indicator"] == "warning":
        assert card["summary"] == UNREAD_SI_SUMMARY
        assert "(from Observation/o-i9)" in card["detail"]
    else:
        assert card["summary"].startswith(CRITICAL_SUMMARY)


# --- cross-resource merging still works around an unreadable resource --------------------------
def test_panel_members_are_merged_when_one_member_is_unreadable(clinic_client):
    panel = phq9_panel("pn", ROUTINE, day(1), (0, 0, 0, 0, 0, 0, 0, 0, 2))
    panel[3] = {**panel[3], "effectiveDateTime": "garbage"}  # item 3 unreadable
    card = card_of(clinic_client, ROUTINE, observations=panel)
    # Panel and the other 8 members make one row (item 9 "more than half the days").
    assert card["indicator"] == "critical"
    assert "- Observation/pn-i3: effectiveDateTime" in card["detail"]
    assert "1 row(s) from the EHR's prefetch were used" in card["detail"]
    assert "PHQ-9 item 9" in card["detail"]  # the flag comes from the merged row
    assert day(1) in card["detail"]


def test_disagreeing_total_is_left_out_and_the_response_used(clinic_client):
    items = (1, 0, 1, 0, 1, 0, 0, 0, 0)  # total 3
    qr = phq9_qr("q-new", ROUTINE, day(1), items)
    total = observation("t-new", ROUTINE, day(1), LOINC_PHQ9_TOTAL, {"valueInteger": 20})
    card = card_of(clinic_client, ROUTINE, responses=[qr], observations=[total])
    assert "- Observation/t-new: " in card["detail"]
    assert "does not agree with the items" in card["detail"]
    assert "1 row(s) from the EHR's prefetch were used" in card["detail"]
    assert card["summary"] != UNREAD_SI_SUMMARY


# --- without a model, and without a stored history ---------------------------------------------
@pytest.fixture
def no_model_client(make_app):
    app = make_app(
        KAP_CDS_CLIENTS={
            "clients": [{"iss": CDS_ISS, "secret": CDS_SECRET, "algorithms": ["HS256"]}]
        },
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    return client_for(app)


def test_without_model_ideation_beside_unreadable_data_is_critical(no_model_client):
    pid = "nm-si"
    hist = ehr_history(pid)
    card = card_of(
        no_model_client,
        pid,
        responses=[*hist["responses"], ideation_yes(pid, day(1))],
        procedures=hist["procedures"],
        observations=[total_with_comparator(pid, day(3))],
    )
    assert card["indicator"] == "critical"
    assert "- Observation/t-lt" in card["detail"]


def test_without_model_unreadable_si_data_make_a_review_warning(no_model_client):
    pid = "nm-plain"
    hist = ehr_history(pid)
    bad = {**ideation_yes(pid, day(1)), "authored": "yesterday"}
    card = card_of(
        no_model_client, pid, responses=[*hist["responses"], bad], procedures=hist["procedures"]
    )
    assert card["indicator"] == "warning"
    assert card["summary"] == UNREAD_SI_SUMMARY
    assert "- QuestionnaireResponse/c1: " in card["detail"]


def test_unknown_patient_with_only_unreadable_si_data_gets_a_review_warning(no_model_client):
    bad = {**ideation_yes("nobody-yet", day(1)), "authored": "yesterday"}
    card = card_of(no_model_client, "nobody-yet", responses=[bad])
    assert card["indicator"] == "warning"
    assert card["summary"] == UNREAD_SI_SUMMARY
    assert "- QuestionnaireResponse/c1: " in card["detail"]
    # Without SI data the same situation stays the plain "no history" card, naming it.
    other = card_of(
        no_model_client,
        "nobody-yet",
        procedures=[ketamine_procedure("p-bad", "nobody-yet", "not-a-date")],
    )
    assert other["indicator"] == "info"
    assert "no ketamine-treatment history" in other["summary"]
    assert "- Procedure/p-bad: " in other["detail"]


# --- cards_for ----------------------------------------------------------------------------------
def _answer(status: str, level: str | None) -> dict[str, Any]:
    return {
        "patient_id": "p1",
        "as_of": "2026-11-27",
        "model_version": "v1",
        "status": status,
        "status_reason": "Why.",
        "safety": {"level": level, "reasons": [], "statement": "Review."},
        "risk": {"kind": "personalised", "horizons": [{"days": 28, "risk": 0.3}]},
        "suggestion": {
            "session_by": "2026-12-10",
            "window_start": "2026-12-03",
            "window_end": "2026-12-10",
            "threshold": 0.2,
            "rationale": "Book the next session by 10 Dec 2026.",
        },
    }


@pytest.mark.parametrize(
    ("status", "level"),
    [
        ("urgent_review", "urgent"),
        ("safety_review", "review"),
        ("safety_review", None),
        ("urgent_review", None),
        ("routine", "review"),
    ],
)
def test_every_safety_status_and_level_is_critical(status, level):
    for unread in (False, True):
        (card,) = cards_for(_answer(status, level), "http://x/patients/p1", [], si_unread=unread)
        assert card["indicator"] == "critical"
        assert card["summary"].startswith(CRITICAL_SUMMARY)


@pytest.mark.parametrize("status", ["routine", "session_due", "not_in_response"])
def test_unread_si_data_turn_any_other_card_into_a_review_warning(status):
    (card,) = cards_for(_answer(status, None), "http://x/patients/p1", ["Named."], si_unread=True)
    assert card["indicator"] == "warning"
    assert card["summary"] == UNREAD_SI_SUMMARY
    assert card["detail"].startswith("**Prefetched EHR data that can hold a suicidal-ideation")
    assert "Named." in card["detail"]
    assert card["extension"]["org.kap-forecast.forecast"]["si_data_unread"] is True


# --- a prefetched ideation answer on the date of a stored row -----------------------------------
def test_prefetched_ideation_answer_on_a_stored_date_is_never_silent(clinic_client):
    """A prefetched row dated like a stored row is not used (the stored row is).

    The C-SSRS screen of that day, missing from the stored row, used to vanish
    behind a routine info card; now it is named and a review asked.
    """
    c = clinic_client
    card = card_of(c, ROUTINE, responses=[ideation_yes(ROUTINE, day(2))])
    assert card["indicator"] == "warning"
    assert card["summary"] == UNREAD_SI_SUMMARY
    assert (
        f"- the assessment of {day(2)} (from QuestionnaireResponse/c1): not used"
        in (card["detail"])
    )
    assert "cssrs_ideation 4 here, none in kap-forecast" in card["detail"]
    # The EHR re-sending what is stored (the same questionnaire) changes nothing.
    same = phq9_qr(f"{ROUTINE}-q3", ROUTINE, day(2), (1, 1, 1, 0, 1, 1, 0, 0, 0))
    plain = card_of(c, ROUTINE)
    again = card_of(c, ROUTINE, responses=[same])
    assert again["summary"] == plain["summary"]
    assert again["indicator"] == plain["indicator"]
    assert "left out" not in again["detail"]
