"""One safety outcome on every input path (property-based).

Histories with suicidal-ideation answers in random places (full PHQ-9s, totals
only, item 9 alone, PHQ-2 items with or without item 9, C-SSRS screens alone)
plus noise (retries, unrelated FHIR resources, a PHQ-2 total) go through the
five paths a clinician's answer can take:

1. a contract folder and ``forecast predict``;
2. the JSON API, stored (posted twice: a retry), then ``GET .../forecast``;
3. the stateless ``POST /api/v1/forecast`` and ``/forecast/batch``;
4. a FHIR Bundle posted to ``/fhir/r4``, then the stored forecast;
5. a CDS Hooks ``patient-view`` call carrying the resources as prefetch.

The expected safety outcome comes from :func:`expected_safety`, written here
from the documented rules (docs: suggestions and safety), not from the code.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.cli import main
from forecast.instruments import (
    LOINC_PHQ2_TOTAL,
    LOINC_PHQ9_ITEMS,
    LOINC_PHQ9_TOTAL,
    LOINC_SYSTEM,
)
from tests.fixtures.clinic import (
    CDS_AUDIENCE,
    CDS_ISS,
    CDS_SECRET,
    LA,
    bundle,
    cssrs_qr,
    ketamine_procedure,
    observation,
    patient,
    phq9_qr,
)
from tests.fixtures.service import client_for

STATUS_OF_LEVEL = {"urgent": "urgent_review", "review": "safety_review"}
TODAY = dt.datetime.now(dt.UTC).date()
INDUCTION_DAYS = (-80, -77, -74)
_ids = itertools.count()


@dataclass
class Answer:
    """One questionnaire occasion (days relative to today)."""

    day: int
    kind: str  # full | total | screen | phq2 | cssrs
    item9: int | None = None
    total: int | None = None
    cssrs: int | None = None
    behavior: int | None = None


@dataclass
class History:
    maintenance: list[int]
    answers: list[Answer]
    noise: bool
    sessions: list[tuple[int, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = [(d, "induction") for d in INDUCTION_DAYS] + [
            (d, "maintenance") for d in sorted(set(self.maintenance))
        ]


def _date(day: int) -> str:
    return (TODAY + dt.timedelta(days=day)).isoformat()


@st.composite
def histories(draw: Any) -> History:
    days = draw(st.lists(st.integers(-72, 0), min_size=1, max_size=7, unique=True))
    answers = [Answer(-80, "total", total=20)]  # the baseline
    for d in sorted(days):
        kind = draw(st.sampled_from(["full", "total", "screen", "phq2", "cssrs"]))
        a = Answer(d, kind)
        if kind in ("full", "screen"):
            a.item9 = draw(st.integers(0, 3))
        if kind == "phq2":
            a.item9 = draw(st.one_of(st.none(), st.integers(0, 3)))
        if kind in ("full", "total"):
            a.total = draw(st.integers(3, 15))
        if kind == "cssrs" or (kind == "full" and draw(st.booleans())):
            a.cssrs = draw(st.integers(0, 5))
            a.behavior = draw(st.sampled_from([0, 0, 0, 1]))
        answers.append(a)
    maintenance = draw(st.lists(st.integers(-70, 0), max_size=3))
    return History(maintenance, answers, noise=draw(st.booleans()))


# --- the rules, written from the documentation ------------------------------------------
def _level(a: Answer) -> str | None:
    if (a.cssrs is not None and a.cssrs >= 4) or a.behavior == 1:
        return "urgent"
    if (a.item9 is not None and a.item9 >= 1) or (a.cssrs is not None and a.cssrs >= 1):
        return "review"
    return None


def expected_safety(h: History) -> tuple[str | None, list[str]]:
    """Level and dates of the flags in force today."""
    last = max(d for d, _ in h.sessions)
    in_force = []
    for a in h.answers:
        if _level(a) is None:
            continue
        by_cssrs = (a.cssrs is not None and a.cssrs >= 1) or a.behavior == 1
        later = [b for b in h.answers if b.day > a.day and _level(b) is None]
        if by_cssrs:
            closed = any(b.cssrs == 0 for b in later)
        else:
            closed = any(b.cssrs == 0 or b.item9 == 0 for b in later)
        if a.day >= last or not closed:
            in_force.append(a)
    levels = {_level(a) for a in in_force}
    level = "urgent" if "urgent" in levels else "review" if levels else None
    return level, [_date(a.day) for a in in_force]


# --- the history in each input shape -----------------------------------------------------
def rows(h: History) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sessions and assessments as contract rows (JSON / CSV columns)."""
    sessions = [{"id": f"s{d}", "date": _date(d), "kind": k} for d, k in h.sessions]
    assessments = []
    for a in h.answers:
        r: dict[str, Any] = {"id": f"a{a.day}", "date": _date(a.day)}
        if a.kind == "full":
            # Eight items summing to the total's share, item 9 as drawn.
            rest = max(0, (a.total or 0) - (a.item9 or 0))
            items = [min(3, rest // 8 + (1 if k < rest % 8 else 0)) for k in range(8)]
            r.update({f"phq9_{k + 1}": v for k, v in enumerate(items)})
            r["phq9_9"] = a.item9
        elif a.kind == "total":
            r["phq9_total"] = a.total
        elif a.kind == "screen":
            r["phq9_9"] = a.item9
        elif a.kind == "phq2":
            r.update({"phq9_1": 1, "phq9_2": 1})
            if a.item9 is not None:
                r["phq9_9"] = a.item9
        if a.cssrs is not None:
            r["cssrs_ideation"] = a.cssrs
            r["cssrs_behavior"] = a.behavior
        assessments.append(r)
    return sessions, assessments


def resources(h: History, pid: str) -> list[dict[str, Any]]:
    """The history as FHIR R4 resources (the shapes EHRs send), plus optional noise."""
    _, assessments = rows(h)
    out: list[dict[str, Any]] = [patient(pid)]
    for d, kind in h.sessions:
        out.append(ketamine_procedure(f"{pid}-s{-d}-{kind[0]}", pid, _date(d), kind=kind))
    for a, r in zip(h.answers, assessments, strict=True):
        rid = f"{pid}-a{-a.day}"
        when = r["date"]
        if a.kind == "full":
            items = [r[f"phq9_{k}"] for k in range(1, 10)]
            out.append(phq9_qr(rid, pid, when, items))
        elif a.kind == "total":
            out.append(observation(rid, pid, when, LOINC_PHQ9_TOTAL, {"valueInteger": a.total}))
        for k in (1, 2, 9):
            if a.kind in ("screen", "phq2") and r.get(f"phq9_{k}") is not None:
                value = {"valueCodeableConcept": {"coding": [
                    {"system": LOINC_SYSTEM, "code": LA[r[f"phq9_{k}"]]}
                ]}}
                out.append(observation(f"{rid}-i{k}", pid, when, LOINC_PHQ9_ITEMS[k - 1], value))
        if a.cssrs is not None:
            yes = tuple(range(1, a.cssrs + 1))
            out.append(cssrs_qr(f"{rid}-c", pid, when, yes=yes, behaviour=a.behavior == 1))
    if h.noise:
        when = _date(h.answers[-1].day)
        out.append(observation(f"{pid}-hr", pid, when, "8867-4", {"valueQuantity": {
            "value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}))
        out.append(observation(f"{pid}-p2", pid, when, LOINC_PHQ2_TOTAL, {"valueInteger": 2}))
    return out


# --- the paths ---------------------------------------------------------------------------
@pytest.fixture
def paths_client(make_app: Any, clinic_models: Path) -> Any:
    app = make_app(
        models=clinic_models,
        KAP_CDS_CLIENTS={
            "clients": [
                {"iss": CDS_ISS, "name": "test-ehr", "secret": CDS_SECRET, "algorithms": ["HS256"]}
            ]
        },
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    return client_for(app)


def _check(where: str, answer: dict[str, Any], level: str | None, dates: list[str]) -> None:
    safety = answer["safety"]
    assert safety["level"] == level, (where, safety)
    assert sorted(t["date"] for t in safety["triggered_by"]) == sorted(dates), (where, safety)
    if level is None:
        assert answer["status"] not in STATUS_OF_LEVEL.values(), where
    else:
        assert answer["status"] == STATUS_OF_LEVEL[level], where
        assert answer["status_reason"].startswith(("An urgent", "A review")), where
        assert answer["suggestion"]["rationale"].startswith("Review the suicidal-ideation")
    assert "not a suicide-risk assessment" in safety["statement"]


def via_folder(tmp: Path, models: Path, h: History, pid: str) -> pd.DataFrame:
    sessions, assessments = rows(h)
    folder = tmp / pid
    folder.mkdir()
    pd.DataFrame({"patient_id": [pid]}).to_csv(folder / "patients.csv", index=False)
    s = pd.DataFrame(sessions).drop(columns="id").assign(patient_id=pid)
    s.to_csv(folder / "sessions.csv", index=False)
    a = pd.DataFrame(assessments).drop(columns="id").assign(patient_id=pid)
    for c in ("cssrs_ideation", "cssrs_behavior", *(f"phq9_{k}" for k in range(1, 10))):
        if c in a:
            a[c] = a[c].astype("Int64")
    if "phq9_total" in a:
        a["phq9_total"] = a["phq9_total"].astype("Int64")
    a.to_csv(folder / "assessments.csv", index=False)
    out = tmp / f"{pid}.csv"
    args = ["predict", str(folder), "--model", "latest", "--models", str(models)]
    args += ["--as-of", TODAY.isoformat(), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype={"patient_id": str})


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(h=histories())
def test_every_path_gives_the_same_safety_outcome(
    paths_client: Any, clinic_models: Path, tmp_path: Path, h: History
) -> None:
    import uuid

    from tests.test_cds import call, hook, token

    c = paths_client
    n = next(_ids)
    level, dates = expected_safety(h)
    sessions, assessments = rows(h)
    today = TODAY.isoformat()

    # 1. folder + forecast predict
    table = via_folder(tmp_path, clinic_models, h, f"csv{n}")
    assert (table["safety"].iloc[0] if pd.notna(table["safety"].iloc[0]) else None) == level
    assert table["status"].iloc[0] == STATUS_OF_LEVEL.get(level, table["status"].iloc[0])

    # 2. JSON API, stored, with a retry of every post
    pid = f"json{n}"
    assert c.http.put(f"/api/v1/patients/{pid}", json={}, headers=c.headers()).status_code < 300
    for _ in range(2):
        r = c.http.post(
            f"/api/v1/patients/{pid}/sessions", json={"sessions": sessions}, headers=c.headers()
        )
        assert r.status_code in (200, 201), r.get_json()
        r = c.http.post(
            f"/api/v1/patients/{pid}/assessments",
            json={"assessments": assessments},
            headers=c.headers(),
        )
        assert r.status_code in (200, 201), r.get_json()
    r = c.http.get(f"/api/v1/patients/{pid}/forecast?as_of={today}", headers=c.headers())
    assert r.status_code == 200, r.get_json()
    _check("stored", r.get_json(), level, dates)

    # 3. stateless and batch
    body = {
        "patient": {"patient_id": f"sl{n}"},
        "sessions": [{k: v for k, v in s.items() if k != "id"} for s in sessions],
        "assessments": [{k: v for k, v in a.items() if k != "id"} for a in assessments],
        "as_of": today,
    }
    r = c.http.post("/api/v1/forecast", json=body, headers=c.headers())
    assert r.status_code == 200, r.get_json()
    _check("stateless", r.get_json(), level, dates)
    r = c.http.post(
        "/api/v1/forecast/batch", json={"as_of": today, "histories": [body]}, headers=c.headers()
    )
    assert r.status_code == 200, r.get_json()
    _check("batch", r.get_json()["forecasts"][0], level, dates)

    # 4. FHIR import, then the stored forecast
    pid = f"fhir{n}"
    r = c.http.post(
        "/fhir/r4",
        json=bundle(resources(h, pid)),
        headers={**c.headers(), "Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    r = c.http.get(f"/api/v1/patients/{pid}/forecast?as_of={today}", headers=c.headers())
    assert r.status_code == 200, r.get_json()
    _check("fhir", r.get_json(), level, dates)

    # 5. CDS Hooks with the resources as prefetch (a patient the store does not know)
    pid = f"cds{n}"
    res = resources(h, pid)[1:]
    if h.noise:  # an item-9 answer the service cannot read: a reason for review
        bogus = {"valueCodeableConcept": {"coding": [{"system": LOINC_SYSTEM, "code": "LA-9"}]}}
        res.append(observation(f"{pid}-bad", pid, today, LOINC_PHQ9_ITEMS[8], bogus))
    prefetch = {
        "observations": bundle([x for x in res if x["resourceType"] == "Observation"], "searchset"),
        "responses": bundle(
            [x for x in res if x["resourceType"] == "QuestionnaireResponse"], "searchset"
        ),
        "procedures": bundle([x for x in res if x["resourceType"] == "Procedure"], "searchset"),
    }
    r = call(c, hook(pid, prefetch), token(jti=uuid.uuid4().hex))
    assert r.status_code == 200, r.get_json()
    (card,) = r.get_json()["cards"]
    data = card["extension"]
    data = next(iter(data.values()))
    assert data["safety_level"] == level, card
    if level is not None:
        assert card["indicator"] == "critical", card
        assert data["status"] == STATUS_OF_LEVEL[level]
        for d in dates:
            assert d in card["detail"], card
    elif h.noise:
        assert card["indicator"] == "warning", card
        assert card["summary"] == "Suicidal-ideation data in the EHR could not be read: review it"
        assert f"{pid}-bad" in card["detail"], card
    else:
        assert card["indicator"] != "critical", card


# --- the issue's cases as regression tests -------------------------------------------------
def test_item9_alone_and_phq2_with_item9_are_screens_on_every_input(tmp_path: Path) -> None:
    from forecast.data import load_cohort, validate_records
    from forecast.fhir import map_resources
    from forecast.instruments import score_assessments

    rows_in = [
        {"date": "2026-11-01", "phq9_9": 2},
        {"date": "2026-11-02", "phq9_1": 1, "phq9_2": 2, "phq9_9": 1},
        {"date": "2026-11-03", "phq9_1": 1, "phq9_2": 2},
    ]
    # JSON API records
    frame, problems = validate_records("assessments", rows_in, patient_id="p")
    assert problems == []
    scored = score_assessments(frame)
    assert scored["phq9"].isna().all()  # no PHQ-9 total: the models ignore the rows
    assert scored["safety"].tolist() == ["review", "review", None]
    # CSV folder
    (tmp_path / "patients.csv").write_text("patient_id\np\n")
    (tmp_path / "sessions.csv").write_text("patient_id,date,kind\np,2026-10-01,induction\n")
    (tmp_path / "assessments.csv").write_text(
        "patient_id,date,phq9_1,phq9_2,phq9_9\n"
        "p,2026-11-01,,,2\np,2026-11-02,1,2,1\np,2026-11-03,1,2,\n"
    )
    cohort = load_cohort(tmp_path)
    assert score_assessments(cohort.assessments)["safety"].tolist() == ["review", "review", None]
    # FHIR: a lone item-9 Observation and PHQ-2 items plus item 9
    def item(rid: str, when: str, k: int, v: int) -> dict[str, Any]:
        value = {"valueCodeableConcept": {"coding": [{"system": LOINC_SYSTEM, "code": LA[v]}]}}
        return observation(rid, "p", when, LOINC_PHQ9_ITEMS[k - 1], value)

    mapped = map_resources(
        [item("o1", "2026-11-01", 9, 2), item("o2", "2026-11-02", 1, 1),
         item("o3", "2026-11-02", 2, 2), item("o4", "2026-11-02", 9, 1)]
    )
    got = [{k: v for k, v in r.items() if k.startswith("phq9")} for r in mapped.assessments]
    assert got == [{"phq9_9": 2}, {"phq9_1": 1, "phq9_2": 2, "phq9_9": 1}]
    warnings = [i.diagnostics for i in mapped.issues]
    assert sum("do not make a PHQ-9" in w and "safety rules" in w for w in warnings) == 2


def test_a_partial_phq9_without_total_is_an_error_that_names_item9() -> None:
    from forecast.data import validate_records

    row = {"date": "2026-11-01", "phq9_1": 1, "phq9_4": 2, "phq9_9": 3}
    _, problems = validate_records("assessments", [row], patient_id="p")
    (p,) = problems
    assert p.column == "phq9_total"
    assert "item 9 answer (3) is not recorded until the row is fixed" in p.message


@pytest.mark.slow
def test_page_shows_an_open_flag_from_before_the_first_session(paths_client: Any) -> None:
    """Item 9 = 3 and C-SSRS 3 before the first session, no screen since (issue case 4)."""
    c = paths_client
    pid = "pre-si"
    sessions = [{"date": _date(d), "kind": "induction"} for d in (-40, -37, -34)]
    assessments = [
        {"date": _date(-41), "phq9_total": 20, "cssrs_ideation": 3},
        {"date": _date(-42), "phq9_9": 3},
        {"date": _date(-20), "phq9_total": 6},
        {"date": _date(-5), "phq9_total": 7},
    ]
    c.http.put(f"/api/v1/patients/{pid}", json={}, headers=c.headers())
    c.http.post(f"/api/v1/patients/{pid}/sessions", json={"sessions": sessions},
                headers=c.headers())
    r = c.http.post(f"/api/v1/patients/{pid}/assessments", json={"assessments": assessments},
                    headers=c.headers())
    assert r.status_code == 201, r.get_json()
    answer = c.http.get(f"/api/v1/patients/{pid}/forecast", headers=c.headers()).get_json()
    assert answer["status"] == "safety_review"
    assert [t["date"] for t in answer["safety"]["triggered_by"]] == [_date(-42), _date(-41)]
    assert all(t["negative_screen_since"] is None for t in answer["safety"]["triggered_by"])
    assert all("no negative screen since" in r for r in answer["safety"]["reasons"])

    from tests.test_pages import login

    login(c, c.tokens["clinician"])
    html = c.http.get(f"/patients/{pid}").get_data(as_text=True)
    assert "Review: suicidal-ideation answer on record" in html
    assert "No suicidal-ideation rule" not in html
    assert "Next maintenance session by" not in html
    assert "Review the suicidal-ideation answer first" in html
    assert f"{_date(-42)} (before the last session); no negative screen since" in html
    assert 'class="suggest"' not in html  # no date line on the chart beside the flag
