"""The audit trail: every access audited with actor, clinic, action, patient and outcome;
append-only in the database; paginated and filtered over HTTP; exported by the CLI."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from service import db
from service.store import Store
from tests.fixtures.clinic import ROUTINE
from tests.fixtures.service import assert_problem

#: What a row's detail may say: counts of rows, token names and roles, model versions.
DETAIL = re.compile(r"^[\w .,:()/>-]*$")


def test_every_access_is_audited_with_actor_clinic_and_outcome(clinic_client) -> None:
    c = clinic_client
    st = c.app.extensions["kap_store"]
    first = st.count("audit")
    h = c.headers()
    assert c.get(f"/api/v1/patients/{ROUTINE}").status_code == 200
    assert c.get("/api/v1/patients/nobody").status_code == 404
    body = {"assessments": [{"id": "z1", "date": "2025-02-03", "phq9_total": 23}]}
    assert c.post(f"/api/v1/patients/{ROUTINE}/assessments", body).status_code == 201
    assert c.http.delete(f"/api/v1/patients/{ROUTINE}/assessments/z1", headers=h).status_code == 200
    bad = {"assessments": [{"id": "z2", "date": "2025-02-04", "phq9_total": 99}]}
    assert c.post(f"/api/v1/patients/{ROUTINE}/assessments", bad).status_code == 422
    assert c.get(f"/api/v1/patients/{ROUTINE}/forecast").status_code == 200
    assert c.get(f"/patients/{ROUTINE}").status_code == 200
    assert c.get(f"/fhir/r4/Patient/{ROUTINE}").status_code == 200
    made = c.post("/api/v1/tokens", {"name": "temp", "role": "clinician"}, role="admin")
    assert made.status_code == 201
    assert c.http.delete("/api/v1/tokens/temp", headers=c.headers("admin")).status_code == 200
    assert c.post("/api/v1/model/reload", role="admin").status_code == 200
    rows = st.audit_rows(action=None, outcome=None)[first:]
    seen = {(r["action"], r["patient_id"], r["outcome"], r["token_name"]) for r in rows}
    clin, admin = "test-clinician", "test-admin"
    for expected in [
        ("patient.read", ROUTINE, "ok", clin),
        ("patient.read", "nobody", "not_found", clin),
        ("patient.write", ROUTINE, "ok", clin),
        ("patient.withdraw", ROUTINE, "ok", clin),
        ("patient.write", ROUTINE, "refused", clin),
        ("forecast", ROUTINE, "ok", clin),
        ("page.view", ROUTINE, "ok", clin),
        ("token.create", None, "ok", admin),
        ("token.revoke", None, "ok", admin),
        ("model.reload", None, "ok", admin),
    ]:
        assert expected in seen, (expected, sorted(seen, key=str))
    assert {r["clinic"] for r in rows} == {"default"}
    assert all(r["time"] is not None and r["request_id"] for r in rows)
    # The FHIR import of the fixture was audited per patient, as fhir.import.
    imports = st.audit_rows(action="fhir.import")
    assert ROUTINE in {r["patient_id"] for r in imports}
    # No clinical values: details hold counts, names and versions only.
    for r in st.audit_rows(action=None, outcome=None):
        assert r["detail"] is None or DETAIL.match(r["detail"]), r["detail"]
        # The posted PHQ-9 total (23) never appears as a value (model versions hold digits).
        assert not re.search(r"(?<!\w)23(?!\w)", r["detail"] or "")


def test_cds_calls_are_audited_with_the_client_name(clinic_client) -> None:
    from tests.test_cds import call, hook, token

    c = clinic_client
    assert call(c, hook(ROUTINE), token()).status_code == 200
    st = c.app.extensions["kap_store"]
    (row,) = st.audit_rows(ROUTINE, action="cds.call")
    assert (row["token_name"], row["clinic"], row["outcome"]) == ("cds:test-ehr", "default", "ok")


def test_audit_rows_cannot_be_updated_or_deleted(store: Store) -> None:
    store.record_audit("alice", None, "patient.read", "p1")
    store.record_audit("alice", "north", "model.reload", detail="from 1 to 2")
    for statement in (sa.update(db.audit).values(outcome="error"), sa.delete(db.audit)):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.write() as conn:
            conn.execute(statement)
    if store.dialect == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.write() as conn:
            conn.execute(sa.text("TRUNCATE audit"))
    rows = store.audit_rows(action=None, outcome=None)
    assert [(r["action"], r["patient_id"], r["outcome"]) for r in rows] == [
        ("patient.read", "p1", "ok")]
    (north,) = store.scoped("north").audit_rows(action=None)
    assert north["detail"] == "from 1 to 2"
    with pytest.raises(ValueError, match="action"):
        store.record_audit("alice", None, "patient.erase")


def test_audit_api_is_paginated_and_filtered(client) -> None:
    st = client.app.extensions["kap_store"]
    for k in range(25):
        st.record_audit("dr-a" if k % 2 else "dr-b", None, "patient.read", f"p{k % 5}")
    page = client.get("/api/v1/audit?limit=10", role="admin").get_json()
    assert len(page["audit"]) == 10
    ids = [r["audit_id"] for r in page["audit"]]
    collected = list(ids)
    while page["next"] is not None:
        page = client.get(f"/api/v1/audit?limit=10&after={page['next']}",
                          role="admin").get_json()
        collected += [r["audit_id"] for r in page["audit"]]
    # Every row once, in order (the admin's own audit.read rows come after).
    assert collected == sorted(set(collected))
    assert len(collected) >= 25
    only = client.get("/api/v1/audit?patient_id=p3&actor=dr-a", role="admin").get_json()
    assert {(r["patient_id"], r["token_name"]) for r in only["audit"]} == {("p3", "dr-a")}
    assert len(only["audit"]) == len([k for k in range(25) if k % 5 == 3 and k % 2])
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    later = client.get(f"/api/v1/audit?since={tomorrow}", role="admin").get_json()
    assert later == {"audit": [], "next": None}
    reads = client.get("/api/v1/audit?action=audit.read", role="admin").get_json()["audit"]
    assert reads
    assert {r["token_name"] for r in reads} == {"test-admin"}
    for query, field in (("limit=0", "query/limit"), ("limit=5000", "query/limit"),
                         ("after=-1", "query/after"), ("action=delete", "query/action"),
                         ("since=yesterday", "query/since"), ("page=2", "query/page")):
        assert_problem(client.get(f"/api/v1/audit?{query}", role="admin"), 422, field=field)


def test_audit_export_cli_writes_json_lines_since_a_day(tmp_path, monkeypatch) -> None:
    from forecast.cli import main
    from service.app import open_store

    monkeypatch.setenv("FORECAST_DATABASE_URL", f"sqlite:///{tmp_path / 'a.sqlite'}")
    st = open_store()
    try:
        st.record_audit("dr", None, "patient.read", "p1")
        st.record_audit("dr", "north", "patient.read", "p2")
    finally:
        st.dispose()
    today = dt.datetime.now(dt.UTC).date()
    runner = CliRunner()
    out = runner.invoke(main, ["audit", "export", "--since", today.isoformat()])
    assert out.exit_code == 0, out.output
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(r["clinic"], r["patient_id"]) for r in lines] == [("default", "p1"), ("north", "p2")]
    north = runner.invoke(main, ["audit", "export", "--since", today.isoformat(),
                                 "--clinic", "north", "--out", str(tmp_path / "n.jsonl")])
    assert north.exit_code == 0, north.output
    rows = [json.loads(x) for x in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert [r["patient_id"] for r in rows] == ["p2"]
    tomorrow = (today + dt.timedelta(days=1)).isoformat()
    none = runner.invoke(main, ["audit", "export", "--since", tomorrow])
    assert none.exit_code == 0
    assert none.stdout == ""
