"""TRIPOD+AI-style model cards (JSON and Markdown) for registry versions.

A card states the intended users and population, the outcome and its
horizons, how censoring was handled, the full model specification, a training
data summary (counts only, never patient rows), the metrics if the model was
evaluated, and the limitations (see docs/models.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from forecast.bundle import AFT_FAMILIES, HAZARD_FAMILIES, Bundle

_ORIGIN_TEXT = {
    "landmark": (
        "Dynamic landmark model: features are computed at the as-of date and the model "
        "predicts the residual time from that date (super-landmark stacking of training "
        "episodes at several landmarks after each episode's start)."
    ),
    "as_of": (
        "Dynamic model on the episode's time scale: features are computed at the as-of "
        "date (super-landmark stacking of training episodes at several landmarks after each "
        "episode's start), each training row is left-truncated at the last assessment that "
        "showed no waning, and the risk within h days is 1 - S(as-of + h) / S(last such "
        "assessment), times counted from the episode's start."
    ),
    "episode_start": (
        "Static model from the episode's start: features at the start of the episode; risks "
        "at a later as-of date are conditioned on the time already survived, "
        "1 - S(s + h) / S(s)."
    ),
    # the piecewise kind: also read at as-of, but its clock starts at the entry
    "entry": (
        "Dynamic model on the time since the last assessment without waning: features are "
        "computed at the as-of date (super-landmark stacking of training episodes at several "
        "landmarks after each episode's start), each training row's clock starts at its last "
        "assessment that showed no waning, and the risk within h days is 1 - S(days from that "
        "assessment to as-of + h)."
    ),
}

_CENSORING = {
    "km": "Turnbull non-parametric maximum likelihood estimator for interval-censored data "
          "(lifelines KaplanMeierFitter.fit_interval_censoring).",
    "cox": "Interval-censored events placed at the midpoint of their interval (lifelines' "
           "semi-parametric Cox does not handle interval censoring); right-censored episodes "
           "at their last event-free assessment.",
    "aft": "True interval-censored likelihood: the event lies between the last event-free "
           "assessment and the first assessment showing waning, log(S(lower) - S(upper)); "
           "right-censored rows contribute log S(lower). Lower bounds of 0 (landmark rows "
           "whose event may already have happened unseen) are set to 0.001 days.",
    "piecewise": "True interval-censored likelihood on the time since each row's last "
                 "assessment without waning (its entry, known survived, so S = 1 there): "
                 "log(S(lower) - S(upper)), right-censored rows log S(lower).",
}

_FAMILY_TEXT = {
    "weibull": "Weibull AFT: S(t) = exp(-(t / exp(eta)) ** rho), rho = exp(g)",
    "lognormal": "log-normal AFT: S(t) = 1 - Phi((log t - eta) / sigma), sigma = exp(g)",
    "loglogistic": "log-logistic AFT: S(t) = 1 / (1 + (t / exp(eta)) ** beta), beta = exp(g)",
    "cox": "Cox proportional hazards: S(t) = exp(-H0(t) exp((z - m) . beta)), Breslow H0 "
           "interpolated linearly between event times",
    "km": "Population survival curve without covariates (step function)",
    "piecewise": "Piecewise exponential on the time t since the last assessment without "
                 "waning: hazard exp(a_j + z . (beta + delta_j)) in window j of t (edges "
                 "below), S(t) = exp(-H(t)); beta is the average effect over the windows "
                 "(coefficients), delta_j each window's deviation from it",
}


def _coefficients(bundle: Bundle) -> list[dict[str, Any]]:
    if bundle.encoder is None:
        return []
    coef = bundle.arrays["coef"]
    boot = bundle.arrays.get("boot_coef")
    rows = []
    for j, (col, feat) in enumerate(
        zip(bundle.encoder.columns, bundle.encoder.column_features, strict=True)
    ):
        row: dict[str, Any] = {"column": col, "feature": feat, "coef": float(coef[j]),
                               "active": bool(bundle.encoder.active[j])}
        if boot is not None and len(boot) > 1:
            row["bootstrap_sd"] = float(np.std(boot[:, j], ddof=1))
        rows.append(row)
    return rows


def _model_spec(bundle: Bundle) -> dict[str, Any]:
    """The card's ``model`` section: kind, formula, features, coefficients, windows."""
    enc = bundle.encoder
    spec: dict[str, Any] = {
        "kind": bundle.kind,
        "family": bundle.family,
        "formula": _FAMILY_TEXT.get(bundle.family, bundle.family),
        "time_origin": bundle.time_origin,
        "time_origin_text": _ORIGIN_TEXT.get(
            "entry" if bundle.family == "piecewise" else bundle.time_origin, ""),
        "features": None if enc is None else {
            "numeric": list(enc.numeric),
            "numeric_means": enc.means.tolist(),
            "numeric_scales": enc.scales.tolist(),
            "categorical": {k: list(v) for k, v in enc.categorical.items()},
            "reference_levels": dict(enc.references),
        },
        "preprocessing": (
            "numeric features standardised with the training mean and SD, missing values "
            "imputed by the training mean; categorical features one-hot over fixed levels "
            "minus the most frequent (reference) level and centred on the training "
            "frequencies, so that a missing or unseen category gets the average effect"
        ) if enc is not None else "none (no covariates)",
        "coefficients": _coefficients(bundle),
        "penalizer": bundle.meta.get("penalizer"),
        "bootstrap": {
            "replicates": bundle.n_bootstrap,
            "resampling": "patients (cluster bootstrap), refitted at train time",
            "seed": bundle.meta.get("random_state"),
        },
    }
    if bundle.family == "piecewise":
        spec["windows_days"] = bundle.meta.get("edges")
        spec["window_log_base_hazard"] = bundle.arrays["log_base"].tolist()
        spec["window_penalizer"] = bundle.meta.get("window_penalizer")
        # versions trained before the option penalised per column SD
        spec["penalty_scale"] = bundle.meta.get("penalty_scale", "sd")
        cols = bundle.encoder.columns if enc is not None else []
        spec["window_coefficients"] = [dict(zip(cols, map(float, row), strict=True))
                                       for row in bundle.arrays["window_coef"]]
    if bundle.family in AFT_FAMILIES:
        spec["intercept"] = float(bundle.arrays["intercept"])
        spec["log_ancillary"] = float(bundle.arrays["ancillary"])
    if "family_selection" in bundle.meta:
        spec["family_selection"] = bundle.meta["family_selection"]
    if enc is not None and enc.time_interactions:
        spec["time_interactions"] = {
            "features": list(enc.time_interactions),
            "form": f"feature * log(1 + {enc.time_feature}): the effect of each feature that "
                    "changes within an episode may change with the time since its start",
        }
    if bundle.time_origin in ("landmark", "as_of"):
        spec["training_rows"] = (
            "super-landmark rows at fixed days after each episode start plus one row per "
            "episode at its first forecast point (the response assessment), each with the "
            "features known on that date and "
            + ("the residual time from it" if bundle.time_origin == "landmark" else
               "the waning interval from the last assessment without waning up to that "
               "date" if bundle.family == "piecewise" else
               "the waning interval from the episode start, left-truncated at the last "
               "assessment without waning up to that date"))
    if "ancillary_covariates" in bundle.meta:
        spec["ancillary_covariates"] = bundle.meta["ancillary_covariates"]
        spec["ancillary_coef"] = bundle.arrays["anc_coef"].tolist()
    return spec


def _censoring_text(bundle: Bundle) -> str:
    """How the version's likelihood handles interval censoring (and left truncation)."""
    censoring = _CENSORING["aft" if bundle.family in AFT_FAMILIES else bundle.family]
    if bundle.time_origin == "as_of" and bundle.family != "piecewise":
        censoring += (
            " Left truncation: each landmark row's interval counts from the episode start and "
            "the row is known to have lasted to its last assessment without waning (entry), "
            "so its contribution is log(S(lower) - S(upper)) - log S(entry) (lifelines' "
            "entry_col).")
    return censoring


def build_card(
    bundle: Bundle,
    *,
    version: str,
    definition: Any,
    training: dict[str, Any],
    fingerprint: dict[str, Any],
    metrics: dict[str, Any] | None,
    environment: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the model card of a version (a JSON-able dict)."""
    return {
        "title": "kap-forecast: time until the benefit of a ketamine session wanes",
        "version": version,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "intended_use": {
            "users": "clinicians of ketamine / ketamine-assisted psychotherapy clinics "
                     "(decision support for timing maintenance sessions) and researchers",
            "population": "adults treated with ketamine for depression (and the other listed "
                          "indications) who responded to a session (PHQ-9 response)",
            "not_for": [
                "suicide-risk assessment: suicidal-ideation answers are handled by fixed "
                "safety rules that override any forecast",
                "patients not in response or without a baseline PHQ-9",
                "populations unlike the training data (see training_data)",
            ],
        },
        "outcome": {
            "event": "benefit waned: first assessment after the episode start no longer in "
                     "response with PHQ-9 >= threshold, or re-emerging suicidal ideation",
            "definition": definition.to_dict() if hasattr(definition, "to_dict") else {},
            "horizons_days": [int(h) for h in bundle.horizons],
            "time_origin": bundle.time_origin,
        },
        "censoring": _censoring_text(bundle),
        "model": _model_spec(bundle),
        "training_data": {k: v for k, v in training.items() if k != "patient_ids"},
        "data_fingerprint": fingerprint,
        "metrics": metrics,
        "metrics_note": None if metrics else
        "not evaluated at train time; run `forecast evaluate DIR --model REF --out REPORT`",
        "limitations": [
            "landmark rows of one episode are correlated: uncertainty comes from a "
            "patient-level bootstrap, not from model standard errors",
            "the event is only seen at assessments; its time is known to lie between visits",
            "drop-out may be informative (heavy in ketamine clinics); censoring is assumed "
            "non-informative given the features",
            "an episode ends at the next session, so few episodes are followed to the long "
            "horizons where clinics book boosters on a schedule: calibration at 56 days and "
            "beyond rests on the patients who reach them (see the report's share of rows "
            "whose status is known at each horizon), and even a perfectly calibrated model "
            "reads an ICI well above 0 there (the report's calibrated reference)",
            "forecasts are decision support for a clinician, never a clearance",
        ],
        "software": environment,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(card: dict[str, Any]) -> str:
    """Human-readable Markdown rendering of a card."""
    m = card.get("model", {})
    out = [f"# Model card: {card.get('title', '')}", ""]
    out += [f"- Version: `{card.get('version')}`", f"- Created (UTC): {card.get('created_utc')}",
            f"- Kind: `{m.get('kind')}` ({m.get('formula')})",
            f"- Time origin: {m.get('time_origin_text')}", ""]
    iu = card.get("intended_use", {})
    out += ["## Intended use", f"- Users: {iu.get('users')}",
            f"- Population: {iu.get('population')}"]
    out += [f"- Not for: {x}" for x in iu.get("not_for", [])]
    oc = card.get("outcome", {})
    out += ["", "## Outcome", f"- Event: {oc.get('event')}",
            f"- Horizons (days): {', '.join(str(h) for h in oc.get('horizons_days', []))}",
            "- Definition: " + ", ".join(f"{k}={v}" for k, v in oc.get("definition", {}).items()),
            "", "## Censoring", card.get("censoring", ""), ""]
    out += _specification_md(m)
    out += ["", "## Training data (counts only)"]
    out += [f"- {k}: {_fmt(v)}" for k, v in card.get("training_data", {}).items()
            if not isinstance(v, dict | list)]
    fp = card.get("data_fingerprint") or {}
    if fp.get("sha256"):
        out.append(f"- Data fingerprint (sha256): `{fp['sha256']}`")
    out += ["", "## Metrics"]
    metrics = card.get("metrics")
    if metrics:
        out += _metrics_md(metrics)
    else:
        out.append(card.get("metrics_note") or "not evaluated")
    out += ["", "## Limitations"] + [f"- {x}" for x in card.get("limitations", [])]
    sw = card.get("software", {})
    out += ["", "## Software", f"- Python {sw.get('python')}"]
    out += [f"- {k} {v}" for k, v in sw.get("packages", {}).items()]
    return "\n".join(out) + "\n"


def _window_names(edges: list[float]) -> list[str]:
    """Labels of the piecewise windows ("0-7 d", ..., "56 d-") from their left edges."""
    ends = [*edges[1:], None]
    return [f"{a:g}-{b:g} d" if b is not None else f"{a:g} d-" for a, b in
            zip(edges, ends, strict=True)]


def _specification_md(m: dict[str, Any]) -> list[str]:
    """The "Model specification" section: settings, windows and the coefficient table."""
    out = ["## Model specification", f"- Preprocessing: {m.get('preprocessing')}",
           f"- L2 penalizer: {_fmt(m.get('penalizer'))}"
           + (" (per unit of each design column: an SD for the standardised numeric columns, "
              "the indicator for a category)" if m.get("penalty_scale") == "unit" else
              " (per column SD)" if m.get("coefficients") else "")]
    if "family_selection" in m:
        sel = m["family_selection"]
        aic = ", ".join(f"{k} {v:.1f}" for k, v in sel.get("aic", {}).items())
        cvb = ", ".join(f"{k} {v:.5f}" for k, v in sel.get("cv_brier", {}).items())
        out.append(f"- Family: {sel.get('family')} (chosen by {sel.get('method')}; AIC {aic}"
                   + (f"; held-out Brier {cvb}" if cvb else "") + ")")
    if m.get("training_rows"):
        out.append(f"- Training rows: {m['training_rows']}")
    if m.get("time_interactions"):
        ti = m["time_interactions"]
        out.append(f"- Time interactions ({ti.get('form')}): "
                   + ", ".join(ti.get("features", [])))
    if m.get("ancillary_covariates"):
        out.append("- Shape (ancillary) parameter depends on: "
                   + ", ".join(m["ancillary_covariates"]))
    if "intercept" in m:
        out.append(f"- Intercept (log days): {_fmt(m['intercept'])}; log ancillary: "
                   f"{_fmt(m['log_ancillary'])}")
    b = m.get("bootstrap", {})
    out.append(f"- Bootstrap: {b.get('replicates')} patient-resampled refits (seed "
               f"{b.get('seed')})")
    edges = m.get("windows_days")
    names: list[str] = []
    if edges:
        names = _window_names(edges)
        base = ", ".join(f"{n} {np.exp(v):.4g}" for n, v in
                         zip(names, m.get("window_log_base_hazard", []), strict=True))
        out.append(f"- Windows of the time since the last assessment without waning, with the "
                   f"baseline hazard per day (every design column at 0): {base}")
        out.append(f"- Window penalizer (on each window's deviation): "
                   f"{_fmt(m.get('window_penalizer'))}")
    if m.get("coefficients"):
        out += _coefficients_md(m, names)
    return out


def _coefficients_md(m: dict[str, Any], names: list[str]) -> list[str]:
    """The coefficient scale note and table (per-window columns when there are windows)."""
    out: list[str] = []
    scale = ("log hazard ratios per unit of the design column (positive: the benefit "
             "wanes sooner)" if m.get("family") in HAZARD_FAMILIES else
             "log time ratios per unit of the design column (positive: the benefit "
             "lasts longer)" if m.get("family") in AFT_FAMILIES else "")
    if scale:
        out.append(f"- Coefficients: {scale}; numeric columns are standardised, so a "
                   "unit is one training SD")
    wins = m.get("window_coefficients") if names else None
    extra = [f"in {n}" for n in names] if wins else []
    out += ["", "| design column | coefficient | bootstrap SD |"
            + "".join(f" {e} |" for e in extra), "|---|---|---|" + "---|" * len(extra)]
    for r in m["coefficients"]:
        cells = [_fmt(r["coef"] + w.get(r["column"], 0.0)) for w in wins] if wins else []
        out.append(f"| {r['column']} | {_fmt(r['coef'])} | {_fmt(r.get('bootstrap_sd'))} |"
                   + "".join(f" {c} |" for c in cells))
    if wins:
        out.append("")
        out.append("For the piecewise model the coefficient is the average effect over the "
                   "windows and each window column its effect within that window "
                   "(average + the window's deviation).")
    return out


def _metrics_md(metrics: dict[str, Any]) -> list[str]:
    """Headline table at the first forecast point, then the episode-start table."""
    cv = metrics.get("cv", {})
    models = cv.get("models", {})
    if not models:
        return [f"- {k}: {_fmt(v)}" for k, v in metrics.items() if not isinstance(v, dict)]
    horizons = metrics.get("horizons", [])
    lines: list[str] = []
    fp = cv.get("forecast_point") or {}
    if fp.get("models"):
        lines += [f"Headline: patient-grouped {cv.get('folds')}-fold cross-validation at the "
                  f"first forecast point, the response assessment ({fp.get('n_episodes')} "
                  "episodes; risk within h days after that date, static models conditioned on "
                  "survival to it):", ""]
        lines += _model_rows(fp["models"], horizons)
        lines += ["", "ICI: mean |predicted - smoothed observed risk| at h as published "
                  "(Austin, Harrell & van Klaveren 2020: Cox model of the whole follow-up on a "
                  "3-knot restricted cubic spline of log(-log(1 - risk))); in brackets its "
                  "noise floor, the mean ICI a perfectly calibrated model reads on the same "
                  "rows. metrics.json keeps two variants, labelled: ici_pseudo (smoothed from "
                  "Kaplan-Meier pseudo-observations) and ici_austin (Cox smoother censored "
                  "at h)."]
        boot = fp.get("bootstrap") or {}
        cis = [f"{label} {_fmt(boot[key][0])}-{_fmt(boot[key][1])}"
               for key, label in (("auc28", "AUC 28d"), ("ici28", "ICI 28d"),
                                  ("ici56", "ICI 56d"), ("auc28_gap_to_oracle",
                                                         "AUC 28d gap to the oracle"))
               if key in boot]
        if cis:
            lines += ["", f"95 % intervals of the model's headline figures ({boot['reps']} "
                      "patient-level bootstrap resamples of the out-of-fold predictions): "
                      + "; ".join(cis) + "."]
        by_h = ((fp["models"].get("model") or {}).get("overall") or {}).get("by_horizon") or {}
        slopes = [f"{h} d {_fmt(r['slope'])} ({_fmt(r['slope_ci95'][0])}-"
                  f"{_fmt(r['slope_ci95'][1])})" for h, r in by_h.items()
                  if r.get("slope") is not None]
        if slopes:
            lines += ["", "Calibration slope of the model (Kaplan-Meier pseudo-observations "
                      "at h on log(-log(1 - risk)), complementary log-log link; 1 is ideal, "
                      "below 1 the risks are too spread): " + "; ".join(slopes) + "."]
        ref = (fp.get("calibrated_reference") or {}).get("by_horizon") or {}
        refs = [f"{h} d {_fmt(r['ici_mean'])} (95th percentile {_fmt(r['ici_p95'])})"
                for h, r in ref.items() if "ici_mean" in r]
        if refs:
            lines += ["", "ICI a perfectly calibrated model would read on the same rows "
                      "(outcomes drawn from the model's own risk curves, censoring kept): "
                      + "; ".join(refs) + ". A model ICI within that range shows no "
                      "miscalibration these data can detect; exact waning times are drawn, "
                      "not assessment intervals, so the reference is approximate."]
        lines += [""]
    lines += [f"Patient-grouped {cv.get('folds')}-fold cross-validation at episode start "
              f"({cv.get('n_episodes')} episodes; before the response is known):", ""]
    lines += _model_rows(models, horizons)
    return lines


def _model_rows(models: dict[str, Any], horizons: list[Any]) -> list[str]:
    head = "| model | Harrell C | Uno C | IBS | " + " | ".join(
        f"AUC {h}d | Brier {h}d | ICI {h}d" for h in horizons) + " |"
    lines = [head, "|" + "---|" * (4 + 3 * len(horizons))]
    for name, res in models.items():
        o = res.get("overall") or {}
        cells = [name, _fmt(o.get("harrell_c")), _fmt(o.get("uno_c")), _fmt(o.get("ibs"))]
        for h in horizons:
            hh = o.get("by_horizon", {}).get(str(h), {})
            fl = hh.get("ici_floor")
            cells += [_fmt(hh.get("auc")), _fmt(hh.get("brier")),
                      _fmt(hh.get("ici")) + (f" ({_fmt(fl[0])})" if fl else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
