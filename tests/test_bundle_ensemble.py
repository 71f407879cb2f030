"""The piecewise band's all-sets-at-once cumulative hazards give the per-set floats exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from forecast.bundle import serving
from forecast.policy import PolicySettings, forecast_frame
from forecast.policy.context import normalise_queries


@pytest.fixture(scope="module")
def design(sim_small: Any, policy_model: Any) -> tuple[Any, pd.DataFrame]:
    bundle = policy_model.bundle
    assert bundle.family == "piecewise"
    assert bundle.n_bootstrap > 1
    cohort = sim_small.cohort
    q = normalise_queries(
        pd.DataFrame({"patient_id": cohort.patients["patient_id"], "as_of": "2026-06-01"}),
        PolicySettings(),
    )
    X = forecast_frame(cohort, policy_model, q, PolicySettings()).X
    assert X is not None
    assert len(X) > 5
    return bundle, X


@pytest.mark.parametrize("since", ["none", "zeros", "varied"])
@pytest.mark.parametrize("clock", [True, False])
def test_ensemble_equals_the_sets_one_by_one(design: Any, since: str, clock: bool) -> None:
    bundle, X = design
    days = np.arange(1, 181, dtype=float)
    z = bundle.design(X)
    s0 = {
        "none": serving._NO_SINCE,
        "zeros": np.zeros(len(X)),
        "varied": (np.arange(len(X)) % 9).astype(float),
    }[since]
    c = bundle._clock(X) if clock else None
    if clock:
        assert c is not None
    one_by_one = np.stack(
        [bundle._conditional_survival(z, days, s0, b, c) for b in range(bundle.n_bootstrap)]
    )
    assert np.array_equal(bundle._piecewise_ensemble(z, days, s0, c), one_by_one, equal_nan=True)
