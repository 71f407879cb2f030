"""The main drivers of a personalised forecast, in clinical terms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from forecast.bundle import HAZARD_FAMILIES
from forecast.policy.model_access import model_bundle

#: Missingness indicators whose feature name is not ``<name>_missing``.
MISSING_INDICATOR_OF: dict[str, str] = {
    "dose_missing": "dose_mg_per_kg",
    "slope_missing": "phq9_slope_28d",
    "item9_missing": "item9_latest",
    "cssrs_missing": "cssrs_latest",
}


def fold_missing_indicators(
    contrib: pd.DataFrame,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`_merge_missing` as a dict of column arrays (no frame built)."""
    matrix = contrib.to_numpy()
    values = {col: matrix[:, j] for j, col in enumerate(contrib.columns)}
    indicator: dict[str, str] = {}
    for col in list(contrib.columns):
        if not col.endswith("_missing"):
            continue
        target = MISSING_INDICATOR_OF.get(col, col[: -len("_missing")])
        if target in values:
            values[target] = values[target] + values.pop(col)
            indicator[target] = col
    return values, indicator


def feature_drivers(model: Any, X: pd.DataFrame, k: int) -> list[list[dict]]:
    """Top-``k`` contributions of each feature to the linear predictor, per row of ``X``.

    ``Bundle.drivers`` gives, per feature, coefficient x encoded value; the
    encoding is centred on the training mean, so a contribution says how this
    patient's value moves the prediction relative to the average training
    patient. For AFT families a positive contribution multiplies the expected
    benefit duration by ``exp(c)`` (lengthens); for Cox and the piecewise kind
    (``HAZARD_FAMILIES``) a positive contribution multiplies the waning hazard
    by ``exp(c)`` (shortens; for piecewise, averaged over its time windows). Missingness
    indicators are folded into their feature, whose value is then shown as
    null (missing).
    """
    bundle = model_bundle(model)
    out: list[list[dict]] = [[] for _ in range(len(X))]
    if k == 0 or len(X) == 0 or not hasattr(bundle, "drivers"):
        return out
    idx = X.index
    plain = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
    # Read only: the frame as it is when its index is already 0..n-1.
    values = X if plain else X.reset_index(drop=True)
    merged, indicator = fold_missing_indicators(bundle.drivers(values))
    if not merged:
        return out
    aft = getattr(bundle, "family", "") not in HAZARD_FAMILIES
    c = np.column_stack(list(merged.values())).astype(float, copy=False)
    names = list(merged)
    order = np.argsort(-np.abs(c), axis=1, kind="stable")[:, :k]
    meaning = (
        "time ratio: the expected benefit duration is multiplied by this factor compared "
        "with the average training patient"
        if aft
        else "hazard ratio: the waning hazard is multiplied by this factor compared with "
        "the average training patient"
    )
    for r in range(len(X)):
        items = []
        for col in order[r]:
            v = float(c[r, col])
            # Contributions below 1 % on the multiplicative scale move nothing
            # a clinician could see; leave them out.
            if not np.isfinite(v) or abs(v) < 0.01:
                continue
            feat = names[col]
            ind = indicator.get(feat)
            missing = ind is not None and ind in values and values.at[r, ind] == 1
            value = None if missing or feat not in values else jsonable(values.at[r, feat])
            longer = (v > 0) == aft
            factor = float(np.exp(v))
            items.append(
                {
                    "feature": feat,
                    "value": value,
                    "direction": "lengthens" if longer else "shortens",
                    "size": round(factor, 2),
                    "size_meaning": meaning,
                }
            )
        out[r] = items
    return out


def jsonable(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d")
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else round(float(v), 3)
    if isinstance(v, str):
        return v
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)
