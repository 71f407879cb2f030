"""The canonical, validated in-memory form of a clinic's data.

Every entry point (CSV/Parquet folder, FHIR Bundle, JSON API, the store)
produces a :class:`Cohort`; everything downstream (outcomes, episodes,
features, models, policy) consumes one. Conventions of the three frames:

- ``patient_id`` is ``str``; ``date`` is ``datetime64[ns]`` at midnight;
- numeric columns are ``float64`` with NaN for blank (items, totals, C-SSRS,
  age, dose, ...); category columns are ``object`` with None for blank;
  ``psychotherapy`` is ``float64`` 1.0 / 0.0 / NaN;
- every contract column is present (blank optional ones are all-NaN/None);
- frames are sorted by ``patient_id`` then ``date`` with a fresh RangeIndex.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecast.contract import TABLES


@dataclass
class Cohort:
    """Patients, sessions and assessments of one clinic (or one patient)."""

    patients: pd.DataFrame
    sessions: pd.DataFrame
    assessments: pd.DataFrame
    #: Extra patient columns the user declared as covariates (numeric).
    covariates: tuple[str, ...] = field(default_factory=tuple)

    def subset(self, patient_ids: list[str] | np.ndarray | pd.Index) -> Cohort:
        """Return the cohort restricted to ``patient_ids`` (order of the frames kept)."""
        ids = pd.Index(patient_ids)
        return Cohort(
            self.patients[self.patients["patient_id"].isin(ids)].reset_index(drop=True),
            self.sessions[self.sessions["patient_id"].isin(ids)].reset_index(drop=True),
            self.assessments[self.assessments["patient_id"].isin(ids)].reset_index(drop=True),
            self.covariates,
        )

    def upto(self, as_of: pd.Timestamp) -> Cohort:
        """Return the history known on ``as_of`` (rows dated on or before it)."""
        as_of = pd.Timestamp(as_of)
        return Cohort(
            self.patients,
            self.sessions[self.sessions["date"] <= as_of].reset_index(drop=True),
            self.assessments[self.assessments["date"] <= as_of].reset_index(drop=True),
            self.covariates,
        )


def empty_frame(table: str, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """An empty canonical frame of ``table`` with the right dtypes."""
    cols: dict[str, pd.Series] = {}
    for c in TABLES[table]:
        if c.kind == "date":
            cols[c.name] = pd.Series([], dtype="datetime64[ns]")
        elif c.kind in ("int", "float", "bool"):
            cols[c.name] = pd.Series([], dtype=float)
        else:
            cols[c.name] = pd.Series([], dtype=object)
    for name in extra:
        cols[name] = pd.Series([], dtype=float)
    return pd.DataFrame(cols)


def canonicalize(table: str, df: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Coerce an already *validated* frame to the canonical dtypes and order.

    This does not validate: call it only on values that passed
    :mod:`forecast.data` validation (or that the code itself produced, e.g.
    the simulator). Missing optional columns are added blank.
    """
    out = pd.DataFrame(index=range(len(df)))
    df = df.reset_index(drop=True)
    for c in TABLES[table]:
        if c.name not in df.columns:
            out[c.name] = np.nan if c.kind in ("int", "float", "bool") else None
            if c.kind == "date":
                out[c.name] = pd.NaT
            continue
        s = df[c.name]
        if c.kind == "date":
            out[c.name] = pd.to_datetime(s).dt.normalize().astype("datetime64[ns]")
        elif c.kind in ("int", "float"):
            out[c.name] = pd.to_numeric(s).astype(float)
        elif c.kind == "bool":
            out[c.name] = pd.Series(s, dtype="boolean").astype("Float64").astype(float)
        else:
            out[c.name] = s.astype(object).where(s.notna(), None)
            if c.name == "patient_id":
                out[c.name] = out[c.name].astype(str)
    for name in extra:
        out[name] = pd.to_numeric(df[name]).astype(float)
    keys = ["patient_id", "date"] if "date" in out.columns else ["patient_id"]
    return out.sort_values(keys, kind="stable").reset_index(drop=True)
