"""Absent optional inputs: named per row, and masked at random for training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecast.absent import OPTIONAL_INPUTS, absent_inputs, mask_optional_inputs


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dose_mg_per_kg": np.full(n, 0.5),
            "dose_missing": np.zeros(n),
            "psychotherapy": np.ones(n),
            "psychotherapy_missing": np.zeros(n),
            "dissociation": np.full(n, 20.0),
            "dissociation_missing": np.zeros(n),
            "item9_latest": np.ones(n),
            "item9_missing": np.zeros(n),
            "cssrs_latest": np.zeros(n),
            "cssrs_missing": np.zeros(n),
            "route": np.full(n, "iv", dtype=object),
            "phq9_latest": np.arange(n, dtype=float),
            "age": np.full(n, 40.0),
            "age_missing": np.zeros(n),
            "diagnosis": np.full(n, "trd", dtype=object),
        }
    )


def test_masking_hides_each_input_independently_at_the_share() -> None:
    X = _rows(20_000)
    masked = mask_optional_inputs(X, 0.25, seed=3)
    shares = {
        name: np.mean([r.count(name) for r in absent_inputs(masked)])
        for name in OPTIONAL_INPUTS
    }
    for name, share in shares.items():
        assert abs(share - 0.25) < 0.015, (name, share)
    # Independent: both dose and route hidden in about 1/16 of the rows.
    both = np.mean([("ketamine dose" in r and "route" in r) for r in absent_inputs(masked)])
    assert abs(both - 0.0625) < 0.01
    # Hidden as the feature builder writes an absent value; other columns untouched.
    hid = masked["dose_missing"] == 1
    assert (masked.loc[hid, "dose_mg_per_kg"] == 0).all()
    assert masked.loc[masked["route"].isna()].shape[0] > 0
    pd.testing.assert_series_equal(masked["phq9_latest"], X["phq9_latest"])
    pd.testing.assert_frame_equal(X, _rows(20_000))  # the input is not modified
    # Seeded: the same seed gives the same mask.
    pd.testing.assert_frame_equal(masked, mask_optional_inputs(X, 0.25, seed=3))
    pd.testing.assert_frame_equal(mask_optional_inputs(X, 0.0, seed=3), X)


def test_joint_masking_makes_totals_only_rows() -> None:
    X = _rows(20_000)
    masked = mask_optional_inputs(X, 0.1, seed=5, joint_share=0.2)
    n_absent = np.array([len(r) for r in absent_inputs(masked)])
    everything = len(OPTIONAL_INPUTS)
    # Totals-only rows: the joint 20 % plus 0.8 x 0.1^6 by chance.
    assert abs(np.mean(n_absent == everything) - 0.2) < 0.015
    # Each input alone is hidden in 0.2 + 0.8 x 0.1 = 28 % of the rows.
    dose = np.mean(["ketamine dose" in r for r in absent_inputs(masked)])
    assert abs(dose - 0.28) < 0.015


def test_absent_inputs_names_what_a_totals_only_history_lacks() -> None:
    X = _rows(2)
    X.loc[1, ["dose_missing", "item9_missing", "cssrs_missing", "age_missing"]] = 1.0
    X.loc[1, "route"] = None
    X.loc[1, "diagnosis"] = None
    assert absent_inputs(X) == [
        [],
        ["age", "diagnosis", "ketamine dose", "route", "PHQ-9 item 9 answer", "C-SSRS screen"],
    ]
