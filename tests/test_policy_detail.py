"""Answers without the daily curve (the service's default) equal the full answers minus it.

The band is computed at the horizons only when the daily curve is not asked
for; the bootstrap quantiles of one day do not depend on the other days, so
every other value of the answer must be identical, byte for byte.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pandas as pd

from forecast.policy import forecast_queries

AS_OF = ["2025-09-01", "2026-03-10", "2026-10-31"]


def _without_daily(answer: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(answer)
    if out.get("risk"):
        out["risk"].pop("daily")
    return out


def test_answers_without_daily_equal_the_full_answers_minus_the_curve(
    sim_small: Any, policy_model: Any
) -> None:
    cohort = sim_small.cohort
    pids = sorted(cohort.patients["patient_id"].astype(str))
    q = pd.DataFrame([(p, d) for p in pids for d in AS_OF], columns=["patient_id", "as_of"])
    full = forecast_queries(cohort, policy_model, q)
    short = forecast_queries(cohort, policy_model, q, daily=False)
    with_risk = [a for a in full if a.get("risk")]
    assert with_risk
    assert any(a["risk"]["horizons"][0]["lower"] is not None for a in with_risk)
    assert all("daily" in a["risk"] for a in with_risk)
    assert all("daily" not in (a.get("risk") or {}) for a in short)
    for a, b in zip(full, short, strict=True):
        assert json.dumps(_without_daily(a), sort_keys=True) == json.dumps(b, sort_keys=True)
