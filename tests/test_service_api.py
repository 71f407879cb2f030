"""The JSON API end to end (in-process): ingest, history, forecasts, audit, logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import pytest

from forecast.cohort import Cohort
from service.histories import frame_json as _records_json
from service.histories import records_json
from tests.fixtures.service import Client, assert_problem

AS_OF = "2026-06-01"


@pytest.fixture(scope="module")
def sim_cohort() -> Cohort:
    """A small simulated clinic (seeded)."""
    from forecast.simulation import simulate

    return simulate(12, seed=5).cohort


def post_history(client: Client, cohort: Cohort, pid: str) -> None:
    """Store one patient's covariates, sessions and assessments through the API."""
    pat = _records_json(
        cohort.patients[cohort.patients["patient_id"] == pid],
        ["age", "sex", "diagnosis", "prior_treatments"],
    )[0]
    assert client.put(f"/api/v1/patients/{pid}", pat).status_code in (200, 201)
    for table in ("sessions", "assessments"):
        frame = getattr(cohort, table)
        items = records_json(frame[frame["patient_id"] == pid], table)
        for i, item in enumerate(items):
            item["id"] = f"{table[0]}{i}"
        resp = client.post(f"/api/v1/patients/{pid}/{table}", {table: items})
        assert resp.status_code in (200, 201), resp.json


def stateless_body(cohort: Cohort, pid: str, **extra: Any) -> dict[str, Any]:
    """The stateless forecast body of one simulated patient."""
    pat = _records_json(
        cohort.patients[cohort.patients["patient_id"] == pid],
        ["patient_id", "age", "sex", "diagnosis", "prior_treatments"],
    )[0]
    body: dict[str, Any] = {"patient": pat}
    for table in ("sessions", "assessments"):
        frame = getattr(cohort, table)
        body[table] = records_json(frame[frame["patient_id"] == pid], table)
    return {**body, **extra}


def test_forecast_routes_answer_503_without_a_model(client: Client, sim_cohort: Cohort) -> None:
    pid = sim_cohort.patients["patient_id"].iloc[0]
    post_history(client, sim_cohort, pid)
    assert_problem(client.get(f"/api/v1/patients/{pid}/forecast"), 503, detail="forecast train")
    body = stateless_body(sim_cohort, pid, as_of=AS_OF)
    assert_problem(client.post("/api/v1/forecast", body), 503, detail="train")
    assert_problem(client.get("/api/v1/model", role="researcher"), 503)
    health = client.http.get("/api/v1/health").json
    assert health == {
        "status": "ok",
        "database": "reachable",
        "model_loaded": False,
        "model_version": None,
    }


def test_stored_history_round_trips_and_reposting_creates_nothing(
    client: Client, sim_cohort: Cohort
) -> None:
    pid = sim_cohort.patients["patient_id"].iloc[1]
    post_history(client, sim_cohort, pid)
    st = client.app.extensions["kap_store"]
    counts = (st.count("sessions"), st.count("assessments"))
    post_history(client, sim_cohort, pid)  # the same batches again
    assert (st.count("sessions"), st.count("assessments")) == counts
    again = client.post(
        f"/api/v1/patients/{pid}/sessions",
        {
            "sessions": [
                {
                    **records_json(
                        sim_cohort.sessions[sim_cohort.sessions.patient_id == pid], "sessions"
                    )[0],
                    "id": "s0",
                }
            ]
        },
    )
    assert again.status_code == 200
    assert again.json["created"] == 0
    assert again.json["sessions"][0]["result"] == "unchanged"
    got = client.get(f"/api/v1/patients/{pid}").json
    expected = sim_cohort.subset([pid])
    assert [s["date"] for s in got["sessions"]] == [
        d.strftime("%Y-%m-%d") for d in expected.sessions["date"]
    ]
    assert len(got["assessments"]) == len(expected.assessments)
    assert got["outcomes"]["n_sessions"] == len(expected.sessions)
    assert got["assessments"][0]["id"] == "a0"
    assert isinstance(got["sessions"][0]["psychotherapy"], bool | None)
    assert "not a clearance" in got["note"]


def test_unknown_patient_is_404_for_reads_and_writes(client: Client) -> None:
    assert_problem(client.get("/api/v1/patients/nobody"), 404)
    body = {"assessments": [{"date": "2026-01-01", "phq9_total": 3}]}
    assert_problem(client.post("/api/v1/patients/nobody/assessments", body), 404)


def test_put_patient_validates_covariates(client: Client) -> None:
    assert client.put("/api/v1/patients/p1", {"age": 40, "sex": "female"}).status_code == 201
    assert client.put("/api/v1/patients/p1", {"age": 40.0, "sex": "female"}).json == {
        "patient_id": "p1",
        "result": "unchanged",
    }
    assert_problem(client.put("/api/v1/patients/p1", {"age": 400}), 422, field="/age")
    assert_problem(
        client.put("/api/v1/patients/p1", {"patient_id": "p2"}), 422, field="/patient_id"
    )
    assert_problem(client.put("/api/v1/patients/%20p1", {}), 422, field="path/patient_id")


def test_stored_stateless_and_batch_forecasts_agree_with_the_policy(
    model_client: Client, sim_cohort: Cohort, service_models
) -> None:
    from forecast import registry
    from forecast.policy import PolicySettings, forecast_queries

    ids = sim_cohort.patients["patient_id"].tolist()[:5]
    for pid in ids:
        post_history(model_client, sim_cohort, pid)
    model = registry.load("latest", service_models)
    queries = pd.DataFrame({"patient_id": ids, "as_of": AS_OF, "threshold": 0.2})
    offline = forecast_queries(
        sim_cohort.subset(ids), model, queries, PolicySettings(), daily=False
    )
    daily = forecast_queries(sim_cohort.subset(ids), model, queries, PolicySettings())

    for pid, expected, curve in zip(ids, offline, daily, strict=True):
        stored = model_client.get(f"/api/v1/patients/{pid}/forecast?as_of={AS_OF}").json
        assert stored == json.loads(json.dumps(expected))
        assert "daily" not in (stored["risk"] or {})
        stateless = model_client.post(
            "/api/v1/forecast", stateless_body(sim_cohort, pid, as_of=AS_OF)
        ).json
        assert stateless == stored
        # ?detail=daily adds the daily curve and band (the page's chart).
        url = f"/api/v1/patients/{pid}/forecast?as_of={AS_OF}&detail=daily"
        assert model_client.get(url).json == json.loads(json.dumps(curve))
        assert model_client.post(
            "/api/v1/forecast?detail=daily", stateless_body(sim_cohort, pid, as_of=AS_OF)
        ).json == json.loads(json.dumps(curve))
    batch = model_client.post(
        "/api/v1/forecast/batch", {"as_of": AS_OF, "patients": [{"patient_id": p} for p in ids]}
    ).json
    assert batch["count"] == len(ids)
    assert batch["forecasts"] == json.loads(json.dumps(offline))
    batch_daily = model_client.post(
        "/api/v1/forecast/batch?detail=daily",
        {"as_of": AS_OF, "patients": [{"patient_id": p} for p in ids]},
    ).json
    assert batch_daily["forecasts"] == json.loads(json.dumps(daily))
    for bad in ("weekly", ""):  # the empty value is outside the OpenAPI enum too
        assert_problem(
            model_client.get(f"/api/v1/patients/{ids[0]}/forecast?detail={bad}"),
            422,
            field="query/detail",
        )
    histories = model_client.post(
        "/api/v1/forecast/batch",
        {"as_of": AS_OF, "histories": [stateless_body(sim_cohort, p) for p in ids[:2]]},
    ).json
    assert histories["forecasts"] == batch["forecasts"][:2]
    from forecast.contract import STATUSES

    assert {f["status"] for f in batch["forecasts"]} <= set(STATUSES)
    for f in batch["forecasts"]:
        assert "not a suicide-risk assessment" in f["safety"]["statement"]


def test_threshold_and_as_of_are_validated(model_client: Client, sim_cohort: Cohort) -> None:
    pid = sim_cohort.patients["patient_id"].iloc[0]
    post_history(model_client, sim_cohort, pid)
    url = f"/api/v1/patients/{pid}/forecast"
    assert_problem(model_client.get(url + "?threshold=1.5"), 422, field="query/threshold")
    assert_problem(model_client.get(url + "?threshold=abc"), 422, field="query/threshold")
    assert_problem(model_client.get(url + "?as_of=2026-13-01"), 422, field="query/as_of")
    assert_problem(model_client.get(url + "?as_of=2999-01-01"), 422, field="query/as_of")
    low = model_client.get(url + f"?as_of={AS_OF}&threshold=0.05").json
    assert low["suggestion"]["threshold"] == pytest.approx(0.05)
    body = {"as_of": AS_OF, "patients": [{"patient_id": pid}, {"patient_id": "ghost"}]}
    assert_problem(
        model_client.post("/api/v1/forecast/batch", body), 422, field="/patients/1/patient_id"
    )
    both = {"patients": [{"patient_id": pid}], "histories": []}
    assert_problem(model_client.post("/api/v1/forecast/batch", both), 422)


def test_stateless_forecast_names_bad_fields(model_client: Client, sim_cohort: Cohort) -> None:
    pid = sim_cohort.patients["patient_id"].iloc[0]
    body = stateless_body(sim_cohort, pid, as_of=AS_OF)
    body["assessments"][2]["phq9_9"] = 9
    assert_problem(model_client.post("/api/v1/forecast", body), 422, field="/assessments/2/phq9_9")
    body = stateless_body(sim_cohort, pid, as_of=AS_OF)
    body["sessions"][0]["kind"] = "booster"
    assert_problem(model_client.post("/api/v1/forecast", body), 422, field="/sessions/0/kind")
    body["extra"] = 1
    assert_problem(model_client.post("/api/v1/forecast", body), 422, field="/extra")


def test_every_forecast_served_is_audited(model_client: Client, sim_cohort: Cohort) -> None:
    ids = sim_cohort.patients["patient_id"].tolist()[:3]
    for pid in ids:
        post_history(model_client, sim_cohort, pid)
    st = model_client.app.extensions["kap_store"]
    single = model_client.get(
        f"/api/v1/patients/{ids[0]}/forecast?as_of={AS_OF}", headers={"X-Request-ID": "req-1"}
    )
    assert single.headers["X-Request-ID"] == "req-1"
    model_client.post("/api/v1/forecast", stateless_body(sim_cohort, ids[0], as_of=AS_OF))
    model_client.post(
        "/api/v1/forecast/batch", {"as_of": AS_OF, "patients": [{"patient_id": p} for p in ids]}
    )
    rows = st.audit_rows()
    assert [r["endpoint"] for r in rows] == ["patient_forecast", "stateless_forecast"] + [
        "batch_forecast"
    ] * 3
    first = rows[0]
    answer = single.json
    assert first["request_id"] == "req-1"
    assert first["token_name"] == "test-clinician"
    assert first["patient_id"] == ids[0]
    assert first["as_of"].isoformat() == AS_OF
    assert first["model_version"] == answer["model_version"]
    assert first["status"] == answer["status"]
    by = answer["suggestion"]["session_by"]
    assert (first["suggested_date"].isoformat() if first["suggested_date"] else None) == by
    # Same inputs by any route -> same inputs hash; another as-of -> another hash.
    assert rows[1]["inputs_hash"] == first["inputs_hash"] == rows[2]["inputs_hash"]
    model_client.get(f"/api/v1/patients/{ids[0]}/forecast?as_of=2026-05-01")
    assert st.audit_rows(ids[0])[-1]["inputs_hash"] != first["inputs_hash"]
    url = f"/api/v1/audit?patient_id={ids[0]}&action=forecast"
    audit = model_client.get(url, role="admin").json["audit"]
    assert len(audit) == 4


def test_logs_carry_request_ids_but_no_patient_data(
    model_client: Client, sim_cohort: Cohort, caplog: pytest.LogCaptureFixture
) -> None:
    from service.logging import JsonFormatter

    pid = sim_cohort.patients["patient_id"].iloc[0]
    with caplog.at_level(logging.DEBUG, logger="service"):
        post_history(model_client, sim_cohort, pid)
        resp = model_client.get(f"/api/v1/patients/{pid}/forecast?as_of={AS_OF}")
        model_client.post("/api/v1/patients/x/assessments", {"assessments": [{"phq9_9": 3}]})
    fmt = JsonFormatter()
    lines = [fmt.format(r) for r in caplog.records]
    text = "\n".join(lines)
    assert resp.headers["X-Request-ID"] in text
    assert pid not in text
    assert AS_OF not in text
    assert "phq9" not in text
    for line in lines:
        json.loads(line)


def test_model_card_names_the_live_version(model_client: Client, service_models) -> None:
    from forecast import registry

    card = model_client.get("/api/v1/model", role="researcher").json
    assert card["version"] == registry.list_versions(service_models)[-1]
    assert card["live"] is True
    assert isinstance(card["card"], dict)
    health = model_client.http.get("/api/v1/health").json
    assert health["model_loaded"] is True
    assert health["model_version"] == card["version"]


def _store_directly(store: Any, cohort: Cohort) -> None:
    """Bulk-load a validated (simulated) cohort without the per-row API (setup only)."""
    from service.store import row_hash

    with store.write() as conn:
        for rec in cohort.patients.to_dict("records"):
            store.upsert_patient(conn, rec)
        for table in ("sessions", "assessments"):
            rows = getattr(cohort, table).to_dict("records")
            store.insert_history(
                conn, table, [{**r, "content_hash": row_hash(table, r)} for r in rows]
            )


@pytest.mark.slow
def test_batch_of_1000_stored_patients_in_one_call(model_client: Client) -> None:
    import time

    from forecast.simulation import simulate

    cohort = simulate(1000, seed=99).cohort
    st = model_client.app.extensions["kap_store"]
    _store_directly(st, cohort)
    ids = cohort.patients["patient_id"].tolist()
    body = {"as_of": AS_OF, "patients": [{"patient_id": p} for p in ids]}
    began = time.perf_counter()
    resp = model_client.post("/api/v1/forecast/batch", body)
    elapsed = time.perf_counter() - began
    assert resp.status_code == 200
    assert resp.json["count"] == 1000
    assert [f["patient_id"] for f in resp.json["forecasts"]] == ids
    assert len(st.audit_rows()) == 1000  # one audit row per patient
    assert elapsed < 15, f"1,000 patients took {elapsed:.1f} s"


def test_batch_histories_name_each_failing_field(model_client: Client, sim_cohort: Cohort) -> None:
    # Three patients with a session and at least three assessments (the edits below need them).
    n_assessments = sim_cohort.assessments.groupby("patient_id").size()
    with_session = set(sim_cohort.sessions["patient_id"])
    ids = [p for p, k in n_assessments.items() if k >= 3 and p in with_session][:3]
    histories = [stateless_body(sim_cohort, p) for p in ids]
    histories[1]["assessments"][2]["phq9_2"] = 7
    histories[2]["sessions"].append(dict(histories[2]["sessions"][0]))
    histories[0]["patient"]["sex"] = "f"
    problem = assert_problem(
        model_client.post("/api/v1/forecast/batch", {"as_of": AS_OF, "histories": histories}),
        422,
        field="/histories/1/assessments/2/phq9_2",
    )
    fields = {e["field"] for e in problem["errors"]}
    assert "/histories/0/patient/sex" in fields
    dup = next(e for e in problem["errors"] if e["field"].startswith("/histories/2/sessions/"))
    assert "/histories/2/sessions/0" in dup["message"]  # names the other item, not a CSV row
    twice = [stateless_body(sim_cohort, ids[0]), stateless_body(sim_cohort, ids[0])]
    assert_problem(
        model_client.post("/api/v1/forecast/batch", {"histories": twice}),
        422,
        field="/histories/1/patient/patient_id",
    )
    assert model_client.app.extensions["kap_store"].audit_rows() == []


def test_unknown_query_parameters_are_refused(model_client: Client) -> None:
    assert_problem(model_client.get("/api/v1/model?verbose=1"), 422, field="query/verbose")
    assert_problem(
        model_client.get("/api/v1/patients/x/forecast?asof=2026-01-01"), 422, field="query/asof"
    )
    # Without a token the 401 comes first.
    assert model_client.http.get("/api/v1/model?verbose=1").status_code == 401


def test_workflow_on_each_backend(make_app, database, service_models, sim_cohort: Cohort) -> None:
    from tests.fixtures.service import client_for

    c = client_for(make_app(models=service_models, database=database))
    pid = sim_cohort.patients["patient_id"].iloc[2]
    post_history(c, sim_cohort, pid)
    post_history(c, sim_cohort, pid)  # idempotent on this backend too
    st = c.app.extensions["kap_store"]
    assert st.count("assessments") == int((sim_cohort.assessments["patient_id"] == pid).sum())
    stored = c.get(f"/api/v1/patients/{pid}/forecast?as_of={AS_OF}").json
    stateless = c.post("/api/v1/forecast", stateless_body(sim_cohort, pid, as_of=AS_OF)).json
    assert stored == stateless
    rows = st.audit_rows(pid)
    assert len(rows) == 2
    assert rows[0]["inputs_hash"] == rows[1]["inputs_hash"]
