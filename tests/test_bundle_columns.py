"""The encoder reads a mapping of column arrays exactly as it reads the frame built from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from forecast.policy import PolicySettings
from forecast.policy.context import normalise_queries, query_context


@pytest.fixture(scope="module")
def context(sim_small: Any, policy_model: Any) -> tuple[Any, pd.DataFrame, dict]:
    cohort = sim_small.cohort
    pids = cohort.patients["patient_id"].astype(str).tolist()
    q = normalise_queries(
        pd.DataFrame({"patient_id": pids * 2, "as_of": ["2025-11-01"] * len(pids)
                      + ["2026-06-01"] * len(pids)}),
        PolicySettings(),
    )
    ctx, _, columns = query_context(cohort, q, PolicySettings(), policy_model.definition)
    return policy_model.bundle.encoder, ctx, columns


@pytest.mark.parametrize("rows", ["all", "one", "few", "many"])
def test_mapping_design_equals_frame_design(context: Any, rows: str) -> None:
    encoder, ctx, columns = context
    n = len(ctx)
    pick = {"all": np.arange(n), "one": np.array([n // 2]), "few": np.arange(0, n, 7)[:40],
            "many": np.arange(n)[::-1]}[rows]
    frame = ctx.iloc[pick].reset_index(drop=True)
    mapping = {k: np.asarray(v)[pick] for k, v in columns.items()}
    assert np.array_equal(encoder.transform(mapping), encoder.transform(frame), equal_nan=True)


def test_text_and_blank_cells_are_read_alike(context: Any) -> None:
    encoder, ctx, columns = context
    frame = ctx.iloc[:3].reset_index(drop=True).astype({encoder.numeric[0]: object})
    frame.loc[0, encoder.numeric[0]] = None
    frame.loc[1, encoder.numeric[0]] = "not a number"
    frame.loc[2, encoder.numeric[0]] = "4.5"
    name = next(iter(encoder.categorical))
    frame.loc[0, name] = "never seen"
    mapping = {c: frame[c].to_numpy() for c in frame.columns}
    assert np.array_equal(encoder.transform(mapping), encoder.transform(frame), equal_nan=True)
