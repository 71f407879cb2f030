"""``forecast report`` (clinic outcome report) and ``forecast import-fhir`` (Bundle -> folder)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import TABLES

COMMANDS: list[click.Command] = []

_COVARIATE_HELP = "Declare an extra numeric column of patients.csv as a covariate (repeatable)."
_TODAY_HELP = "Reject dates after this day, written YYYY-MM-DD (default: the current date)."


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write report.json and report.html into (created if needed).",
)
@click.option("--covariate", "covariates", multiple=True, metavar="NAME", help=_COVARIATE_HELP)
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help=_TODAY_HELP)
@click.option(
    "--exact",
    is_flag=True,
    help="Keep small counts (1-10) and exact dates: for the clinic's own quality review "
    "only, never for sharing (default: small cells suppressed, dates as months).",
)
def report(
    folder: Path, out: Path, covariates: tuple[str, ...], today: datetime | None, exact: bool
) -> None:
    """Write the clinic outcome report of the contract folder FOLDER.

    Response and remission rates, how long the benefit lasted (Turnbull
    curves overall and by route, diagnosis and psychotherapy), sessions per
    patient-year and suicidal-ideation answers on record, as report.json and
    a self-contained report.html. Counts from 1 to 10 are shown as "<11",
    rates and curves resting on them are withheld, and dates are given as
    months, as in the service's researcher report; ``--exact`` keeps them.
    Exits 1 with the data problems if FOLDER does not conform to the data
    contract.
    """
    from forecast.data import ContractError, load_cohort
    from forecast.report import outcome_report, suppress_small_cells, write_report

    day = today.date() if today is not None else None
    try:
        cohort = load_cohort(folder, covariates=covariates, today=day)
    except ContractError as err:
        for p in err.problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(err.problems)} problem(s) found in {folder}", err=True)
        raise SystemExit(1) from None
    click.echo(f"computing the outcome report of {len(cohort.patients)} patients ...", err=True)
    rep = outcome_report(cohort, today=day)
    if not exact:
        rep = suppress_small_cells(rep)
    path = write_report(rep, out)
    click.echo(str(path / "report.html"))


COMMANDS.append(report)


# --- import-fhir ------------------------------------------------------------------------------
def _key_cols(table: str) -> list[str]:
    return ["patient_id"] if table == "patients" else ["patient_id", "date"]


def _values_equal(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Row-wise equality of two aligned canonical frames (NaN/None equal to each other)."""
    same = np.ones(len(a), dtype=bool)
    for c in cols:
        x = a[c].to_numpy(dtype=object)
        y = b[c].to_numpy(dtype=object)
        xn = pd.isna(a[c]).to_numpy()
        yn = pd.isna(b[c]).to_numpy()
        eq = np.array([u == v for u, v in zip(x, y, strict=True)], dtype=bool) if len(x) else same
        same &= (xn & yn) | (~xn & ~yn & eq)
    return same


def _fill_blanks(old: pd.DataFrame, new: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, list]:
    """Whether ``new`` only fills blanks of ``old`` (per row), and the conflicting columns."""
    ok = np.ones(len(old), dtype=bool)
    conflicts: list[list[str]] = [[] for _ in range(len(old))]
    for c in cols:
        on = pd.isna(old[c]).to_numpy()
        nn = pd.isna(new[c]).to_numpy()
        x = old[c].to_numpy(dtype=object)
        y = new[c].to_numpy(dtype=object)
        diff = ~on & ~nn & np.array([u != v for u, v in zip(x, y, strict=True)], dtype=bool)
        ok &= ~diff
        for i in np.flatnonzero(diff):
            conflicts[i].append(c)
    return ok, conflicts


def _check_present_rows(
    table: str,
    fresh: pd.DataFrame,
    old: pd.DataFrame,
    keys: list[str],
    cols: list[str],
    src: list[str],
    errors: list[str],
) -> tuple[np.ndarray, list[tuple[str, str, int]]]:
    """Rows of ``fresh`` not yet in ``old``, and blank covariates a Patient fills.

    Rows present with other values are reported in ``errors``.
    """
    filled: list[tuple[str, str, int]] = []
    m = fresh[keys].merge(old.reset_index().rename(columns={"index": "_old"}), on=keys, how="left")
    present = m["_old"].notna().to_numpy()
    keep = ~present
    idx = np.flatnonzero(present)
    if len(idx):
        old_rows = old.iloc[m.loc[present, "_old"].astype(int)].reset_index(drop=True)
        new_rows = fresh.iloc[idx].reset_index(drop=True)
        if table == "patients":
            ok, conflicts = _fill_blanks(old_rows, new_rows, cols)
            for j, i in enumerate(idx):
                if not ok[j]:
                    errors.append(
                        f"{src[i]}: patient {fresh.loc[i, 'patient_id']!s} is already "
                        f"in the folder with other {', '.join(conflicts[j])}; edit "
                        "patients.csv or the Patient resource"
                    )
            fills = old_rows[cols].isna().to_numpy() & new_rows[cols].notna().to_numpy()
            filled.extend(
                (str(new_rows.loc[j, "patient_id"]), cols[k], int(idx[j]))
                for j, k in zip(*np.nonzero(fills), strict=True)
            )
        else:
            same = _values_equal(old_rows, new_rows, cols)
            for j, i in enumerate(idx):
                if not same[j]:
                    errors.append(
                        f"{src[i]}: the folder already has a different {table[:-1]} "
                        f"of this patient on {str(fresh.loc[i, 'date'])[:10]}"
                    )
    return keep, filled


def _fill_blank_covariates(
    base_raw: pd.DataFrame,
    filled: list[tuple[str, str, int]],
    fresh_raw: pd.DataFrame,
    counts: dict[str, int],
) -> pd.DataFrame:
    """A copy of the folder's patients with blank covariates filled from Patient resources."""
    # A Patient resource fills covariates that are blank in the folder.
    base_raw = base_raw.copy()
    row_of = dict(zip(base_raw["patient_id"].astype(str), base_raw.index, strict=True))
    for pid, col, i in filled:
        if col in base_raw.columns:
            base_raw[col] = base_raw[col].astype(object)
            base_raw.at[row_of[pid], col] = fresh_raw.loc[i, col]
            counts["patients_updated"] = counts.get("patients_updated", 0) + 1
    return base_raw


def merge_import(
    existing_raw: dict[str, pd.DataFrame] | None,
    existing: Cohort | None,
    new: Cohort,
    new_raw: dict[str, pd.DataFrame],
    sources: dict[str, list[str]],
) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, int]]:
    """Merge a mapped Bundle into a folder's raw tables.

    A row of the Bundle already present with identical values is skipped (a
    repeated import changes nothing); one that differs is an error naming its
    resource. A Patient resource may fill blank covariates of a stored patient
    but not change them.

    Returns
    -------
    raw : dict
        Combined raw tables (existing rows first, then the new ones).
    errors : list of str
        Messages; nothing may be written when not empty.
    counts : dict
        New rows per table.
    """
    errors: list[str] = []
    counts: dict[str, int] = {}
    out: dict[str, pd.DataFrame] = {}
    for table in ("patients", "sessions", "assessments"):
        keys = _key_cols(table)
        cols = [c.name for c in TABLES[table] if c.name not in keys]
        fresh = getattr(new, table).reset_index(drop=True)
        fresh_raw = new_raw[table].reset_index(drop=True)
        # new_raw rows follow the same (patient_id, date) order as the canonical frame.
        fresh_raw = fresh_raw.iloc[
            pd.DataFrame({k: fresh_raw[k] for k in keys}).sort_values(keys, kind="stable").index
        ].reset_index(drop=True)
        src = sources.get(table, [""] * len(fresh))
        if existing is None:
            keep = np.ones(len(fresh), dtype=bool)
            base_raw = None
        else:
            old = getattr(existing, table)
            keep, filled = _check_present_rows(table, fresh, old, keys, cols, src, errors)
            base_raw = existing_raw[table] if existing_raw is not None else None
            if filled and base_raw is not None:
                base_raw = _fill_blank_covariates(base_raw, filled, fresh_raw, counts)
        counts[table] = int(keep.sum())
        add = fresh_raw[keep]
        if base_raw is None:
            out[table] = add.reset_index(drop=True)
        else:
            add = add.reindex(columns=base_raw.columns, fill_value="")
            combined = pd.concat([base_raw, add], ignore_index=True)
            out[table] = combined
    return out, errors, counts


def _cohort_of_raw(raw: dict[str, pd.DataFrame], covariates: tuple[str, ...], today: Any):
    from forecast.data import validate_tables

    return validate_tables(raw, covariates=covariates, today=today)


def _read_existing_folder(
    out: Path, covariates: tuple[str, ...], day: Any
) -> tuple[dict[str, pd.DataFrame] | None, Cohort | None, str]:
    """The folder's raw tables, cohort and file format (exits 1 when it does not conform)."""
    from forecast.data import ContractError, read_folder, validate_tables

    existing_raw = existing = None
    fmt = "csv"
    has_files = out.is_dir() and any(
        (out / f"{t}.{ext}").exists() for t in TABLES for ext in ("csv", "parquet")
    )
    if has_files:
        try:
            existing_raw = read_folder(out)
        except ContractError as err:
            for p in err.problems:
                click.echo(str(p), err=True)
            raise SystemExit(1) from None
        existing, problems = validate_tables(existing_raw, covariates=covariates, today=day)
        if existing is None:
            for p in problems:
                click.echo(str(p), err=True)
            click.echo(f"{out} does not conform to the data contract; nothing imported", err=True)
            raise SystemExit(1)
        fmt = "parquet" if existing_raw["patients"].attrs.get("format") == "parquet" else "csv"
    return existing_raw, existing, fmt


def _map_bundle_or_exit(doc: Any, existing: Cohort | None, forms: list[Any]) -> Any:
    """Map the Bundle against the folder, echoing its warnings (exits 1 when it cannot be read)."""
    from forecast.fhir import FhirError, map_bundle

    first = (
        existing.sessions.groupby("patient_id")["date"].min().to_dict()
        if existing is not None and len(existing.sessions)
        else None
    )
    try:
        known = set(existing.patients["patient_id"]) if existing is not None else set()
        mapped = map_bundle(doc, known_first_session=first, known_patients=known,
                            questionnaires=forms)
    except FhirError as err:
        for issue in err.issues:
            click.echo(f"{issue.severity}: {issue}", err=True)
        click.echo("nothing imported", err=True)
        raise SystemExit(1) from None
    for issue in mapped.issues:
        if issue.severity != "information":
            click.echo(f"{issue.severity}: {issue}", err=True)
    for r in mapped.retractions:
        # A folder keeps no resource ids: the row the resource once made cannot be
        # told from rows of other sources on that day, so nothing is removed here.
        click.echo(
            f"warning: {r['expr']}: {r['id']} is entered-in-error, but a folder keeps no "
            "resource ids, so the row it made (if any) is not removed: correct the file by "
            "hand (POST /fhir/r4 withdraws it from the service's store)",
            err=True,
        )
    return mapped


@click.command("import-fhir")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Contract folder to write into; rows are merged into existing files.",
)
@click.option("--covariate", "covariates", multiple=True, metavar="NAME", help=_COVARIATE_HELP)
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help=_TODAY_HELP)
@click.option(
    "--questionnaires",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Folder of Questionnaire *.json files (the clinic's forms) to read responses through.",
)
def import_fhir(
    bundle: Path, out: Path, covariates: tuple[str, ...], today: datetime | None,
    questionnaires: Path | None,
) -> None:
    """Import a FHIR R4 Bundle file (JSON) into the contract folder OUT.

    Patients, PHQ-9 and C-SSRS answers (QuestionnaireResponse, Observation)
    and ketamine sessions (Procedure) are mapped as for POST /fhir/r4 and
    validated by the same rules as CSV files. Rows already in the folder with
    the same values are skipped, so importing a Bundle twice changes nothing.
    On any error nothing is written and the command exits 1.
    """
    from forecast.data import validate_tables, write_cohort
    from forecast.fhir import load_questionnaires

    day = today.date() if today is not None else None
    try:
        forms = load_questionnaires(questionnaires) if questionnaires is not None else []
    except ValueError as err:
        click.echo(str(err), err=True)
        raise SystemExit(1) from None
    try:
        doc = json.loads(bundle.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        click.echo(f"{bundle}: not a JSON document ({err})", err=True)
        raise SystemExit(1) from None

    existing_raw, existing, fmt = _read_existing_folder(out, covariates, day)

    mapped = _map_bundle_or_exit(doc, existing, forms)

    new_raw = mapped.frames()
    new, problems = validate_tables(new_raw, today=day, sources=_bundle_sources())
    if new is None:
        for p in problems:
            click.echo(f"{_resource_of(p, mapped)}{p}", err=True)
        click.echo("nothing imported", err=True)
        raise SystemExit(1)
    sources = {
        "patients": [mapped.patient_sources.get(p, "Bundle") for p in new.patients["patient_id"]],
        "sessions": _row_sources(mapped, "sessions", new.sessions),
        "assessments": _row_sources(mapped, "assessments", new.assessments),
    }
    raw, errors, counts = merge_import(existing_raw, existing, new, new_raw, sources)
    if errors:
        for e in errors:
            click.echo(e, err=True)
        click.echo("nothing imported", err=True)
        raise SystemExit(1)
    cohort, problems = validate_tables(raw, covariates=covariates, today=day)
    if cohort is None:
        for p in problems:
            click.echo(str(p), err=True)
        click.echo("nothing imported", err=True)
        raise SystemExit(1)
    _write_atomically(cohort, out, fmt, write_cohort)
    click.echo(
        f"imported {counts['sessions']} session(s), {counts['assessments']} assessment(s) and "
        f"{counts['patients']} new patient(s) into {out}"
        + (
            f"; {counts['patients_updated']} blank covariate(s) filled from Patient resources"
            if counts.get("patients_updated")
            else ""
        )
    )


def _bundle_sources() -> dict[str, str]:
    return {t: f"{t} from the Bundle" for t in TABLES}


def _resource_of(problem: Any, mapped: Any) -> str:
    """``"Bundle.entry[2].resource: "`` for a problem of a row mapped from the Bundle."""
    if problem.row is None or problem.source.split(" ")[0] not in ("sessions", "assessments"):
        return ""
    table = problem.source.split(" ")[0]
    rows = mapped.sessions if table == "sessions" else mapped.assessments
    i = problem.row - 2
    if 0 <= i < len(rows):
        exprs = mapped.sources.get((table, rows[i]["id"]), [])
        return f"{exprs[0]}: " if exprs else ""
    return ""


def _row_sources(mapped: Any, table: str, frame: pd.DataFrame) -> list[str]:
    rows = mapped.sessions if table == "sessions" else mapped.assessments
    by_key = {
        (r["patient_id"], r["date"]): (mapped.sources.get((table, r["id"])) or ["Bundle"])[0]
        for r in rows
    }
    return [
        by_key.get((p, d.strftime("%Y-%m-%d")), "Bundle")
        for p, d in zip(frame["patient_id"], frame["date"], strict=True)
    ]


def _write_atomically(cohort: Cohort, out: Path, fmt: str, write_cohort: Any) -> None:
    """Write into a temporary folder next to ``out``, then move the files in place."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    try:
        write_cohort(cohort, tmp, fmt=fmt)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


COMMANDS.append(import_fhir)
