"""The foreign generator (bench/foreign_generator.py) follows the data contract
and its PHQ-9 trajectory agrees with the project's outcome definitions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.data import load_cohort
from forecast.episodes import build_episodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import foreign_generator as fg  # noqa: E402


def test_foreign_cohort_loads_and_has_episodes(tmp_path: Path) -> None:
    frames = fg.generate(300, seed=3, end="2026-06-30")
    fg.write(frames, tmp_path)
    cohort = load_cohort(tmp_path)  # raises ContractError on any contract problem
    assert len(cohort.patients) == 300
    a = frames["assessments"]
    # clinic mix: totals-only rows, item rows, rows without C-SSRS
    assert a["phq9_total"].notna().any()
    assert a["phq9_1"].notna().any()
    assert a["cssrs_ideation"].isna().any()
    assert a["cssrs_ideation"].notna().any()
    ep = build_episodes(cohort)
    assert len(ep) > 300
    assert 0.2 < ep["event"].mean() < 0.9


def test_foreign_oracle_risk_is_a_conditional_weibull_probability() -> None:
    t = np.array([0.0, 10.0, 50.0])
    r = fg.conditional_risk(t, 28, np.full(3, np.log(40.0)))
    assert np.all((r > 0) & (r < 1))
    assert np.all(np.diff(r) > 0)  # shape > 1: the hazard rises with time
    assert np.isclose(r[0], fg.weibull_cdf(np.array([28.0]), np.log(40.0))[0])


def test_foreign_generator_is_seeded() -> None:
    a = fg.generate(50, seed=5)["assessments"]
    b = fg.generate(50, seed=5)["assessments"]
    pd.testing.assert_frame_equal(a, b)
