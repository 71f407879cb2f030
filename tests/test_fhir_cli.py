"""``forecast import-fhir BUNDLE --out DIR``: Bundle file -> validated contract folder."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from forecast.cli import main
from forecast.data import load_cohort
from tests.fixtures.clinic import (
    MII_ITEMS,
    MII_PATIENT,
    bundle,
    ketamine_procedure,
    local_phq9_form,
    local_phq9_response,
    observation,
    patient,
    phq9_qr,
)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_import_real_resources_then_merge_and_repeat(tmp_path, mii_resources):
    qr, obs = mii_resources
    out = tmp_path / "clinic"
    first = write(
        tmp_path / "b1.json",
        bundle(
            [patient(MII_PATIENT), qr, obs, ketamine_procedure("s1", MII_PATIENT, "2024-03-18")]
        ),
    )
    r = run("import-fhir", first, "--out", out)
    assert r.exit_code == 0, r.output
    cohort = load_cohort(out)
    (row,) = cohort.assessments.to_dict("records")
    assert row["patient_id"] == MII_PATIENT
    assert row["date"] == pd.Timestamp("2024-03-15")
    assert tuple(int(row[f"phq9_{i}"]) for i in range(1, 10)) == MII_ITEMS
    assert row["phq9_total"] == 8
    assert cohort.sessions["kind"].tolist() == ["induction"]

    # The same Bundle again changes nothing.
    before = {p.name: p.read_text() for p in out.iterdir()}
    r = run("import-fhir", first, "--out", out)
    assert r.exit_code == 0, r.output
    assert "imported 0 session(s), 0 assessment(s)" in r.output
    assert {p.name: p.read_text() for p in out.iterdir()} == before

    # A later Bundle is merged; its unstated session kind is maintenance.
    later = write(
        tmp_path / "b2.json",
        bundle(
            [
                ketamine_procedure("s2", MII_PATIENT, "2024-04-10"),
                observation("t2", MII_PATIENT, "2024-04-12", "44261-6", {"valueString": "5"}),
            ],
            "collection",
        ),
    )
    r = run("import-fhir", later, "--out", out)
    assert r.exit_code == 0, r.output
    cohort = load_cohort(out)
    assert cohort.sessions["kind"].tolist() == ["induction", "maintenance"]
    assert cohort.assessments["phq9_total"].tolist() == [8.0, 5.0]


def test_bad_bundle_writes_nothing_and_names_the_resource(tmp_path, mii_resources):
    qr, obs = mii_resources
    out = tmp_path / "clinic"
    obs["valueQuantity"]["value"] = 11
    doc = bundle([patient(MII_PATIENT), qr, obs])
    r = run("import-fhir", write(tmp_path / "b.json", doc), "--out", out)
    assert r.exit_code == 1
    assert "Bundle.entry[2].resource.valueQuantity" in r.output
    assert "nothing imported" in r.output
    assert not out.exists() or not any(out.iterdir())


def test_contract_problems_name_the_resource(tmp_path):
    out = tmp_path / "clinic"
    future = phq9_qr("f", "p1", "2999-01-01", (1,) * 9)
    doc = bundle([patient("p1"), future])
    r = run("import-fhir", write(tmp_path / "b.json", doc), "--out", out)
    assert r.exit_code == 1
    assert "Bundle.entry[1].resource: " in r.output
    assert "column date" in r.output


def test_conflicting_row_in_the_folder_is_refused(tmp_path):
    out = tmp_path / "clinic"
    first = bundle([patient("p1"), phq9_qr("r1", "p1", "2025-01-01", (1,) * 9)])
    one = write(tmp_path / "a.json", first)
    other = write(tmp_path / "b.json", bundle([phq9_qr("r2", "p1", "2025-01-01", (2,) * 9)]))
    assert run("import-fhir", one, "--out", out).exit_code == 0
    before = (out / "assessments.csv").read_text()
    r = run("import-fhir", other, "--out", out)
    assert r.exit_code == 1
    assert "already has a different assessment" in r.output
    assert (out / "assessments.csv").read_text() == before


def test_not_json(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{nope")
    r = run("import-fhir", f, "--out", tmp_path / "o")
    assert r.exit_code == 1
    assert "not a JSON document" in r.output


def test_patient_resource_fills_blank_covariates_but_does_not_change_them(tmp_path):
    from forecast.data import write_cohort
    from tests.test_report import hand_cohort

    out = tmp_path / "clinic"
    write_cohort(hand_cohort(), out)  # A: diagnosis trd, no sex, no age, first session 2025-01-02
    doc = bundle(
        [
            patient("A", gender="female", birth="1980-01-10"),
            ketamine_procedure("s9", "A", "2025-01-25"),
        ]
    )
    r = run("import-fhir", write(tmp_path / "b.json", doc), "--out", out, "--today", "2025-03-01")
    assert r.exit_code == 0, r.output
    assert "2 blank covariate(s) filled" in r.output
    a = load_cohort(out, today=pd.Timestamp("2025-03-01").date()).patients.set_index("patient_id")
    assert a.loc["A", "sex"] == "female"
    assert a.loc["A", "age"] == 44  # at the first session on record (2025-01-02), not 45
    assert a.loc["A", "diagnosis"] == "trd"
    other = bundle([patient("A", gender="male")])
    r = run("import-fhir", write(tmp_path / "c.json", other), "--out", out, "--today", "2025-03-01")
    assert r.exit_code == 1
    assert "already in the folder with other sex" in r.output


def test_entered_in_error_is_reported_not_applied_to_a_folder(tmp_path):
    # A folder keeps no resource ids, so the row cannot be told apart: say so, change nothing.
    out = tmp_path / "clinic"
    qr = phq9_qr("q1", "pf", "2025-02-03", (3,) * 9)
    r = run("import-fhir", write(tmp_path / "b1.json", bundle([patient("pf"), qr])), "--out", out)
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_text() for p in out.iterdir()}
    wrong = write(tmp_path / "b2.json", bundle([{**qr, "status": "entered-in-error"}]))
    r = run("import-fhir", wrong, "--out", out)
    assert r.exit_code == 0, r.output
    assert ("Bundle.entry[0].resource: QuestionnaireResponse/q1 is entered-in-error, but a "
            "folder keeps no resource ids") in r.output
    assert "imported 0 session(s), 0 assessment(s)" in r.output
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_import_reads_responses_through_the_clinics_forms(tmp_path):
    forms = tmp_path / "forms"
    forms.mkdir()
    (forms / "phq9.json").write_text(json.dumps(local_phq9_form()))
    items = (1, 1, 1, 1, 1, 1, 1, 1, 1)
    doc = write(tmp_path / "b.json",
                bundle([patient("pl"), local_phq9_response("ql", "pl", "2025-01-06", items)]))
    out = tmp_path / "clinic"
    r = run("import-fhir", doc, "--out", out)
    assert r.exit_code == 0, r.output  # without the form no answer is readable: warned
    assert "'x1Qz'" in r.output
    assert "0 assessment(s)" in r.output
    r = run("import-fhir", doc, "--out", out, "--questionnaires", forms)
    assert r.exit_code == 0, r.output
    (row,) = load_cohort(out).assessments.to_dict("records")
    assert [int(row[f"phq9_{i}"]) for i in range(1, 10)] == list(items)
