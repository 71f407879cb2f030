"""Writing and summarising a simulation: the contract files, ``truth.csv`` and :func:`summarize`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from forecast.contract import HORIZONS
from forecast.data import write_cohort
from forecast.instruments import score_assessments
from forecast.simulation.params import TRUTH_COLUMNS, SimulationResult


def summarize(result: SimulationResult) -> dict[str, float]:
    """Figures of a simulated cohort to compare with the sources the mechanism follows.

    Measured from the generated frames the way a clinic would measure them
    (the definitions of :mod:`forecast.outcomes`), and from the truth for the latent durability.

    Returns
    -------
    dict
        ``induction_incomplete`` and ``stopped_after_first`` (shares of patients
        whose first induction session is at least 30 days before the end date;
        ORKA-2: ~50 % and ~20 %), ``induction_response`` and ``remission``
        (PHQ-9 at the first assessment within 14 days after the last induction
        session vs the baseline: last PHQ-9 on or before the first induction, at
        most 30 days before; ORKA-1: 53.6 % and 28.9 %), ``measured_patients``,
        ``benefit_28d`` and ``benefit_56d`` (share of first episodes whose latent
        wane time exceeds 28 / 56 days; ORKA-1: ~80 % / ~60 %),
        ``first_episodes``, ``episodes`` and ``maintenance_sessions``.
    """
    c = result.cohort
    ind = c.sessions[c.sessions["kind"] == "induction"]
    span = ind.groupby("patient_id")["date"].agg(first="min", last="max", count="size")
    early = span[span["first"] <= result.end_date - pd.Timedelta(days=30)]
    a = score_assessments(c.assessments)[["patient_id", "date", "phq9"]].dropna()
    a = a.merge(span, left_on="patient_id", right_index=True)
    pre = a[(a["date"] <= a["first"]) & (a["date"] >= a["first"] - pd.Timedelta(days=30))]
    post = a[(a["date"] > a["last"]) & (a["date"] <= a["last"] + pd.Timedelta(days=14))]
    baseline = pre.groupby("patient_id")["phq9"].last()
    after = post.groupby("patient_id")["phq9"].first()
    both = pd.concat([baseline.rename("b"), after.rename("a")], axis=1).dropna()
    first = result.truth[result.truth["episode_index"] == 0]["latent_wane_days"]
    return {
        "patients": float(len(c.patients)),
        "induction_incomplete": float((early["count"] < result.params.induction_sessions).mean()),
        "stopped_after_first": float((early["count"] == 1).mean()),
        "measured_patients": float(len(both)),
        "induction_response": float((both["a"] <= 0.5 * both["b"]).mean()),
        "remission": float((both["a"] < 5).mean()),
        "first_episodes": float(len(first)),
        "benefit_28d": float((first > 28).mean()),
        "benefit_56d": float((first > 56).mean()),
        "episodes": float(len(result.truth)),
        "maintenance_sessions": float((c.sessions["kind"] == "maintenance").sum()),
    }


def write_truth(truth: pd.DataFrame, path: str | Path) -> None:
    """Write ``truth.csv`` (dates YYYY-MM-DD, latent days to 2 decimals, risks to 6)."""
    out = truth.loc[:, list(TRUTH_COLUMNS)].copy()
    out["episode_start"] = out["episode_start"].dt.strftime("%Y-%m-%d")
    out["latent_wane_days"] = out["latent_wane_days"].round(2)
    for h in HORIZONS:
        out[f"risk_{h}d"] = out[f"risk_{h}d"].round(6)
    out.to_csv(path, index=False)


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read a ``truth.csv`` written by :func:`write_truth`."""
    df = pd.read_csv(path, dtype={"patient_id": str})
    df["episode_start"] = pd.to_datetime(df["episode_start"])
    return df


def write_simulation(result: SimulationResult, out_dir: str | Path) -> Path:
    """Write patients.csv, sessions.csv, assessments.csv and truth.csv into ``out_dir``.

    The three contract files go through :func:`forecast.data.write_cohort`
    (the one writer of the contract format).

    Returns
    -------
    Path
        The output folder (created if needed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_cohort(result.cohort, out, "csv")
    write_truth(result.truth, out / "truth.csv")
    return out
