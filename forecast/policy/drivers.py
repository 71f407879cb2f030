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


#: Plain clinical label and unit of each feature (``"%"``: a share shown in per cent,
#: ``"yes/no"``: a 0/1 flag, ``""``: a count or a category).
FEATURE_LABELS: dict[str, tuple[str, str]] = {
    "age": ("Age", "years"),
    "prior_treatments": ("Failed antidepressant trials before ketamine", ""),
    "phq9_baseline": ("PHQ-9 before treatment (baseline)", "points"),
    "dose_mg_per_kg": ("Ketamine dose at the last session", "mg/kg"),
    "psychotherapy": ("Psychotherapy with the last session", "yes/no"),
    "dissociation": ("Dissociation at the last session", "of 100"),
    "n_prev_sessions": ("Sessions before the last one", ""),
    "n_prev_episodes": ("Earlier benefit episodes", ""),
    "first_episode": ("First benefit episode", "yes/no"),
    "prev_benefit_days_mean": ("Mean length of earlier benefit episodes", "days"),
    "prev_waned_share": ("Earlier episodes whose benefit waned", "%"),
    "prev_response_ratio_mean": ("Mean PHQ-9 at earlier responses, share of baseline", "%"),
    "elapsed_days": ("Days since the last session", "days"),
    "response_known": ("Response to the last session measured", "yes/no"),
    "response_day": ("Days from the last session to its response PHQ-9", "days"),
    "phq9_response": ("PHQ-9 at the response to the last session", "points"),
    "phq9_response_ratio": ("PHQ-9 at the response, share of baseline", "%"),
    "phq9_latest": ("Latest PHQ-9", "points"),
    "phq9_latest_ratio": ("Latest PHQ-9, share of baseline", "%"),
    "phq9_mean_ratio_since_session": ("Mean PHQ-9 since the last session, share of baseline", "%"),
    "phq9_change": ("PHQ-9 change since the response", "points"),
    "phq9_max_since_session": ("Highest PHQ-9 since the last session", "points"),
    "phq9_slope_28d": ("PHQ-9 change over the last 4 weeks", "points per week"),
    "item9_latest": ("Latest PHQ-9 item 9 answer", "of 3"),
    "cssrs_latest": ("Latest C-SSRS ideation level", "of 5"),
    "days_since_assessment": ("Days since the latest questionnaire", "days"),
    "n_assessments_since_session": ("Questionnaires since the last session", ""),
    "sex": ("Sex", ""),
    "diagnosis": ("Diagnosis", ""),
    "route": ("Route of the last session", ""),
    "session_kind": ("Kind of the last session", ""),
}


def _number(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.1f}"


def describe_value(feature: str, value: Any) -> tuple[str, str]:
    """``(label, shown value)`` of a driver: never blank ("not recorded" when missing)."""
    label, unit = FEATURE_LABELS.get(feature, (feature.replace("_", " ").capitalize(), ""))
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return label, "not recorded"
    if isinstance(value, str):
        return label, value.replace("_", " ")
    x = float(value)
    if unit == "yes/no":
        return label, "yes" if x >= 0.5 else "no"
    if unit == "%":
        return label, f"{100 * x:.0f} %"
    if feature == "phq9_slope_28d":
        # Per week in the model; said over the four weeks a clinician reads it over.
        return label, f"{4 * x:+.1f} points"
    if feature == "phq9_change":
        return label, f"{x:+.0f} points"
    text = _number(x)
    return label, f"{text} {unit}".strip() if unit else text


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


def feature_drivers(
    model: Any, X: pd.DataFrame, k: int, **design: np.ndarray
) -> list[list[dict]]:
    """Top-``k`` contributions of each feature to the linear predictor, per row of ``X``.

    ``Bundle.drivers`` gives, per feature, coefficient x encoded value; the
    encoding is centred on the training mean, so a contribution says how this
    patient's value moves the prediction relative to the average training
    patient. For AFT families a positive contribution multiplies the expected
    benefit duration by ``exp(c)`` (lengthens); for Cox and the piecewise kind
    (``HAZARD_FAMILIES``) a positive contribution multiplies the waning hazard
    by ``exp(c)`` (shortens; for piecewise, averaged over its time windows). Missingness
    indicators are folded into their feature, whose value is then shown as
    null (missing). ``design=`` passes the bundle's encoding of ``X`` when known.
    """
    bundle = model_bundle(model)
    out: list[list[dict]] = [[] for _ in range(len(X))]
    if k == 0 or len(X) == 0 or not hasattr(bundle, "drivers"):
        return out
    idx = X.index
    plain = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
    # Read only: the frame as it is when its index is already 0..n-1.
    values = X if plain else X.reset_index(drop=True)
    merged, indicator = fold_missing_indicators(bundle.drivers(values, **design))
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
            label, shown = describe_value(feat, value)
            items.append(
                {
                    "feature": feat,
                    "label": label,
                    "value": value,
                    "shown": shown,
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
