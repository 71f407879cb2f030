"""Partitioned datasets: the contract folder split by patient into parts.

Layout (``forecast partition`` and ``forecast simulate --patients-per-part``
write it)::

    DIR/patients/part-00000.parquet     DIR/sessions/part-00000.parquet
    DIR/patients/part-00001.parquet     DIR/sessions/part-00001.parquet  ...
    DIR/assessments/part-00000.parquet  ...

Part ``k`` of every table holds the rows of the same patients, and a patient's
rows are all in one part: each part is a contract folder of its own, validated
exactly as one (:func:`check_part`; a problem names the part file, e.g.
``sessions/part-00003.parquet``, its row and column). Parts may also be CSV
files. The writer puts patients in parts in the order of their sorted ids, so
the parts concatenated are in the order a single machine sorts the training
rows in (``forecast.distributed`` relies on it and checks it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import TABLES
from forecast.data.checks import covariate_column
from forecast.data.fileio import _read_csv, _read_parquet, _write_parquet
from forecast.data.problems import ContractError, Problem
from forecast.data.tables import FORMATS, TABLE_NAMES, _sorted, _validate_tables

#: File name of part ``k`` (the writer's; a reader takes any ``*.parquet`` / ``*.csv``).
PART_NAME = "part-{:05d}.parquet"


def is_partitioned(path: Path | str) -> bool:
    """True when ``path`` holds a partitioned dataset (a ``patients`` folder)."""
    return (Path(path) / "patients").is_dir()


def _part_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.suffix.lstrip(".") in FORMATS)


def check_layout(path: Path | str) -> tuple[list[str], list[Problem]]:
    """The part names of a partitioned dataset, and the layout's problems.

    Every table needs a folder with the same part files; a table may not
    also be a flat file next to its folder.
    """
    root = Path(path)
    problems: list[Problem] = []
    names: dict[str, list[str]] = {}
    for table in TABLE_NAMES:
        folder = root / table
        flat = [f"{table}.{fmt}" for fmt in FORMATS if (root / f"{table}.{fmt}").exists()]
        if flat:
            problems.append(Problem(flat[0], None, None, f"both {flat[0]} and the folder {table}/ "
                                    "exist; keep only one of them"))
        if not folder.is_dir():
            problems.append(Problem(f"{table}/", None, None, f"missing folder: a partitioned "
                                    f"dataset needs {table}/ with one file per part"))
            continue
        names[table] = _part_files(folder)
        if not names[table]:
            problems.append(Problem(f"{table}/", None, None,
                                    "no part files (*.parquet or *.csv) in this folder"))
    stems = {t: {Path(n).stem: n for n in v} for t, v in names.items()}
    every = sorted(set().union(*(s.keys() for s in stems.values()))) if stems else []
    for table, own in stems.items():
        for stem in every:
            if stem not in own:
                problems.append(Problem(f"{table}/{stem}.parquet", None, None,
                                        f"missing part: every table needs part {stem} "
                                        "(part k of each table holds the same patients)"))
    parts = [stems["patients"][s] for s in every if s in stems.get("patients", {})]
    return (parts if not problems else []), problems


def _part_file(root: Path, table: str, part: str) -> Path:
    stem = Path(part).stem
    found = [root / table / f"{stem}.{fmt}" for fmt in FORMATS
             if (root / table / f"{stem}.{fmt}").exists()]
    return found[0]


def _check_part(
    root: Path, part: str, covariates: Sequence[str], today: date | None
) -> tuple[Cohort | None, list[Problem], pd.DataFrame | None]:
    """(cohort, problems, raw patients frame) of one part."""
    raw: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    unreadable: list[str] = []
    for table in TABLE_NAMES:
        path = _part_file(root, table, part)
        sources[table] = f"{table}/{path.name}"
        reader = _read_csv if path.suffix == ".csv" else _read_parquet
        frame, probs = reader(path, table, sources[table])
        problems += probs
        if frame is None:
            unreadable.append(table)
        else:
            raw[table] = frame
    cohort, more = _validate_tables(raw, covariates=covariates, today=today, sources=sources,
                                    unreadable=unreadable)
    problems = _sorted(problems + more, raw, sources)
    return (cohort if not problems else None), problems, raw.get("patients")


def check_part(
    path: Path | str, part: str, *, covariates: Sequence[str] = (), today: date | None = None
) -> tuple[Cohort | None, list[Problem]]:
    """Validate one part (its three files) as a contract folder; ``(cohort or None, problems)``."""
    cohort, problems, _ = _check_part(Path(path), part, covariates, today)
    return cohort, problems


def load_part(
    path: Path | str, part: str, *, covariates: Sequence[str] = (), today: date | None = None
) -> Cohort:
    """The canonical cohort of one part; raises ContractError with the part's problems."""
    cohort, problems = check_part(path, part, covariates=covariates, today=today)
    if cohort is None:
        raise ContractError(problems)
    return cohort


def part_patient_ids(path: Path | str, part: str) -> np.ndarray:
    """The ``patient_id`` cells of one part's patients file, in file order (as text)."""
    file = _part_file(Path(path), "patients", part)
    if file.suffix == ".csv":
        ids = pd.read_csv(file, usecols=["patient_id"], dtype=str, keep_default_na=False)
    else:
        ids = pd.read_parquet(file, columns=["patient_id"])
    return ids["patient_id"].astype(str).to_numpy(dtype=object)


def check_split_patients(path: Path | str, parts: Sequence[str],
                         ids: Sequence[np.ndarray]) -> list[Problem]:
    """Patients with rows in more than one part (each part's ``patients`` ids given).

    A problem names the later part's patients file and row; the id itself is
    not repeated in the message.
    """
    all_ids = np.concatenate([np.asarray(i, dtype=object) for i in ids]) if ids else np.zeros(0)
    part_of = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
    rows = np.concatenate([np.arange(len(i)) + 2 for i in ids]) if ids else np.zeros(0)
    codes, _ = pd.factorize(all_ids)
    first_part = np.full(codes.max() + 1 if codes.size else 0, -1)
    order = np.arange(codes.size)[::-1]
    first_part[codes[order]] = part_of[order]  # the last write wins: the first occurrence
    bad = np.flatnonzero(first_part[codes] != part_of)
    out = []
    for i in bad:
        source = f"patients/{_part_file(Path(path), 'patients', parts[part_of[i]]).name}"
        first = _part_file(Path(path), "patients", parts[first_part[codes[i]]]).name
        out.append(Problem(source, int(rows[i]), "patient_id",
                           f"this patient also has rows in patients/{first}; a patient's rows "
                           "must all be in one part (`forecast partition` writes such parts)"))
    return out


def check_partitioned(
    path: Path | str, *, covariates: Sequence[str] = (), today: date | None = None
) -> tuple[Cohort | None, list[Problem]]:
    """Validate every part (one by one) and return the parts concatenated, or the problems."""
    root = Path(path)
    parts, problems = check_layout(root)
    cohorts: list[Cohort] = []
    ids: list[np.ndarray] = []
    for part in parts:
        cohort, probs, raw_patients = _check_part(root, part, covariates, today)
        problems += probs
        ids.append(np.zeros(0, dtype=object) if raw_patients is None
                   else raw_patients["patient_id"].astype(str).to_numpy(dtype=object))
        if cohort is not None:
            cohorts.append(cohort)
    problems += check_split_patients(root, parts, ids)
    if problems:
        return None, problems
    return concat_cohorts(cohorts, tuple(dict.fromkeys(covariates))), []


def concat_cohorts(cohorts: Sequence[Cohort], covariates: tuple[str, ...] = ()) -> Cohort:
    """The parts' cohorts as one (frames concatenated in part order)."""
    def cat(name: str) -> pd.DataFrame:
        return pd.concat([getattr(c, name) for c in cohorts], ignore_index=True)

    return Cohort(cat("patients"), cat("sessions"), cat("assessments"), covariates)


def patient_chunks(ids: np.ndarray, patients_per_part: int) -> Iterator[np.ndarray]:
    """The patient ids of each part: sorted, ``patients_per_part`` at a time."""
    if patients_per_part < 1:
        raise ValueError(f"patients_per_part must be at least 1, got {patients_per_part}")
    uniq = np.unique(np.asarray(ids, dtype=str))
    for s in range(0, len(uniq), patients_per_part):
        yield uniq[s:s + patients_per_part].astype(object)


def write_part(cohort: Cohort, out: Path | str, index: int) -> str:
    """Write ``cohort`` as part ``index`` of the dataset ``out``; return the part's name."""
    root = Path(out)
    name = PART_NAME.format(index)
    for table in TABLE_NAMES:
        specs = list(TABLES[table])
        if table == "patients":
            specs += [covariate_column(c) for c in cohort.covariates]
        (root / table).mkdir(parents=True, exist_ok=True)
        _write_parquet(specs, getattr(cohort, table), root / table / name)
    return name


def write_partitioned(cohort: Cohort, out: Path | str, patients_per_part: int) -> list[str]:
    """Write ``cohort`` as a partitioned dataset: parts of ``patients_per_part`` patients.

    Patients go to parts in the order of their sorted ids; each patient's
    rows of every table go to the same part (a patient is never split).
    Returns the part names.
    """
    root = Path(out)
    if is_partitioned(root) and _part_files(root / "patients"):
        raise ValueError(f"{root} already holds a partitioned dataset; choose an empty folder")
    tables = {t: getattr(cohort, t) for t in TABLE_NAMES}
    chunks = list(patient_chunks(tables["patients"]["patient_id"].to_numpy(), patients_per_part))
    bounds = np.array([c[0] for c in chunks], dtype=str)
    split = {}
    for table, df in tables.items():
        pid = df["patient_id"].to_numpy(dtype=str)
        part = np.searchsorted(bounds, pid, side="right") - 1
        order = np.argsort(part, kind="stable")
        cuts = np.searchsorted(part[order], np.arange(1, len(chunks)))
        split[table] = np.split(order, cuts)
    names = []
    for k in range(len(chunks)):
        sub = Cohort(*(tables[t].iloc[split[t][k]].reset_index(drop=True) for t in TABLE_NAMES),
                     cohort.covariates)
        names.append(write_part(sub, root, k))
    return names
