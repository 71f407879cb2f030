"""Optional inputs a history may not carry, and how a model learns their absence.

Many EHR exports and CDS prefetches carry PHQ-9 totals only: no dose, route,
psychotherapy, dissociation, item answers or C-SSRS. The default model is
trained with each of these inputs hidden at random in a share of its rows
(:func:`mask_optional_inputs`), so its "absent" effect is the average effect
of the input over the training patients (missing completely at random by
construction), never the effect of a subgroup that does not record it. Every
answer names the inputs its history lacked (:func:`absent_inputs`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Inputs an EHR export or a CDS prefetch often leaves out (many send PHQ-9 totals
#: only), with the feature columns each one fills: (value, missing indicator) pairs
#: and categorical columns (None when absent).
OPTIONAL_INPUTS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "ketamine dose": ((("dose_mg_per_kg", "dose_missing"),), ()),
    "route": ((), ("route",)),
    "psychotherapy": ((("psychotherapy", "psychotherapy_missing"),), ()),
    "dissociation": ((("dissociation", "dissociation_missing"),), ()),
    "PHQ-9 item 9 answer": ((("item9_latest", "item9_missing"),), ()),
    "C-SSRS screen": ((("cssrs_latest", "cssrs_missing"),), ()),
}


#: Other inputs a history may lack: patient covariates (indicator or category column).
OTHER_INPUTS: dict[str, str] = {
    "age": "age_missing",
    "prior treatments": "prior_treatments_missing",
    "sex": "sex",
    "diagnosis": "diagnosis",
}


def absent_inputs(X: pd.DataFrame) -> list[list[str]]:
    """Per row of ``X``, the inputs it does not carry: the optional inputs
    (:data:`OPTIONAL_INPUTS`) and the patient covariates (:data:`OTHER_INPUTS`)."""
    out: list[list[str]] = [[] for _ in range(len(X))]
    for name, col in OTHER_INPUTS.items():
        if col not in X:
            continue
        v = X[col].to_numpy(dtype=object)
        if col.endswith("_missing"):
            absent = v.astype(float) == 1.0
        else:  # a category: None, or sex "unknown"
            absent = pd.isna(v) | (v == "unknown")
        for r in np.flatnonzero(absent):
            out[r].append(name)
    for name, (pairs, categorical) in OPTIONAL_INPUTS.items():
        cols = [ind for _, ind in pairs if ind in X] + [c for c in categorical if c in X]
        if not cols:
            continue
        absent = np.zeros(len(X), dtype=bool)
        for _, ind in pairs:
            if ind in X:
                absent |= X[ind].to_numpy(dtype=float) == 1.0
        for c in categorical:
            if c in X:
                absent |= pd.isna(X[c]).to_numpy()
        for r in np.flatnonzero(absent):
            out[r].append(name)
    return out


def mask_optional_inputs(
    X: pd.DataFrame, share: float, seed: int, joint_share: float = 0.0,
    *, offset: int = 0, total: int | None = None,
) -> pd.DataFrame:
    """A copy of ``X`` with optional inputs blanked at random.

    ``joint_share`` of the rows lose every input of :data:`OPTIONAL_INPUTS`
    at once (a totals-only export); in the others each input is hidden
    independently with probability ``share``. Values are blanked as the
    feature builder writes an absent value (0 and indicator 1; None for a
    category). A model fitted on the result learns each "absent" effect, and
    their sum for a totals-only history, from rows where the values were
    hidden at random: the average effect over the training patients, not the
    effect of the subgroup that happens not to record them.

    ``X`` may be rows ``offset .. offset + len(X)`` of a frame of ``total``
    rows (a part of a partitioned dataset, forecast.distributed): the rows
    get exactly the draws they would get in the whole frame (the random
    stream is advanced to them, :func:`_uniforms`).
    """
    for name, value in (("share", share), ("joint_share", joint_share)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    out = X.copy()
    if (share == 0.0 and joint_share == 0.0) or not len(X):
        return out
    total = len(X) if total is None else int(total)
    if offset < 0 or offset + len(X) > total:
        raise ValueError(f"rows {offset}..{offset + len(X)} do not lie in a frame of {total}")
    joint = _uniforms(seed, 0, total, offset, len(X)) < joint_share
    for k, (pairs, categorical) in enumerate(OPTIONAL_INPUTS.values(), start=1):
        hide = joint | (_uniforms(seed, k, total, offset, len(X)) < share)
        for value, ind in pairs:
            if value in out and ind in out:
                out.loc[hide, value] = 0.0
                out.loc[hide, ind] = 1.0
        for c in categorical:
            if c in out:
                out.loc[hide, c] = None
    return out


def _uniforms(seed: int, draw: int, total: int, offset: int, n: int) -> np.ndarray:
    """Uniforms ``offset .. offset + n`` of the ``draw``-th batch of ``total`` from ``seed``.

    The same values as the ``draw``-th ``default_rng(seed).random(total)``
    call sliced: each float64 draw consumes one step of the PCG64 stream, so
    the stream is advanced to the wanted position instead of drawn through.
    """
    bits = np.random.PCG64(seed)
    bits.advance(draw * total + offset)
    return np.random.Generator(bits).random(n)
