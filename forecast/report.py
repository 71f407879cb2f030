"""The clinic outcome report: what happened to this clinic's patients.

Measured outcomes only (no model): response and remission rates, how long the
benefit lasted (Turnbull estimates of the interval-censored episodes of
:mod:`forecast.episodes`, overall and by route, diagnosis and attached
psychotherapy), sessions per patient-year and suicidal-ideation answers on
record. ``forecast report DIR --out REPORT`` writes ``report.json`` and a
self-contained ``report.html`` (plots inline as base64 PNG); the service
serves the same report at ``GET /api/v1/reports/outcomes``.

Definitions (:class:`forecast.outcomes.OutcomeDefinition`):

- *evaluable* patient: a baseline PHQ-9 and at least one PHQ-9 after the
  first induction session; response and remission rates use this
  denominator, with Wilson 95 % intervals (Wilson 1927).
- *responder* / *remitter*: at least one assessment after the first
  induction meeting the response (<= 50 % of baseline) / remission (< 5) rule.
- *benefit duration*: days from the session that started an episode to the
  waning event, interval-censored between the last event-free and the first
  event assessment, right-censored at the next session or the end of
  follow-up; estimated by the Turnbull NPMLE (Turnbull 1976, lifelines'
  ``KaplanMeierFitter.fit_interval_censoring``). Censoring at the next
  session is informative when clinicians book sessions because the patient
  worsens: read the curves as "benefit lasting at least this long without a
  booster", not as a causal effect of route or psychotherapy.
- *follow-up* of a patient: from the first session to the last session or
  assessment on record; sessions per patient-year = sessions / follow-up years.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.episodes import build_episodes
from forecast.instruments import REVIEW, URGENT, score_assessments
from forecast.outcomes import OutcomeDefinition
from forecast.summary import patient_summary

#: Report survival at these days after the episode start.
DURATION_DAYS: tuple[int, ...] = (14, 28, 56, 84)
#: Groups with fewer episodes get counts only, no curve (too noisy to read,
#: and a curve of a handful of patients identifies them).
MIN_GROUP_EPISODES = 10
CAVEATS: tuple[str, ...] = (
    "Measured outcomes of this clinic's records, not a controlled comparison: differences "
    "between routes, diagnoses or psychotherapy may reflect who received them.",
    "Episodes are censored at the next session; when sessions are booked because a patient "
    "worsens, censoring is informative and durations are biased.",
    "Suicidal-ideation counts are answers on record. They are not a suicide-risk assessment, "
    "and the absence of an answer above 0 is not a clearance.",
    "Decision support for the clinic; not a substitute for clinical judgement.",
)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion ``k / n`` (None, None when n = 0)."""
    if n <= 0:
        return None, None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {
        "count": int(k),
        "of": int(n),
        "rate": None if n == 0 else round(k / n, 4),
        "ci95": None if lo is None else [round(lo, 4), round(hi, 4)],
    }


def turnbull_curve(lower: np.ndarray, upper: np.ndarray, max_days: int = 365) -> dict[str, Any]:
    """Turnbull (NPMLE) survival of interval-censored durations on a daily grid.

    Parameters
    ----------
    lower, upper : ndarray
        The event lies in ``(lower, upper]`` days; ``upper = inf`` when
        right-censored at ``lower``.
    max_days : int
        Last day of the grid; the curve stops earlier at the largest finite
        bound observed (no extrapolation).

    Returns
    -------
    dict
        ``days``, ``survival`` (lists), ``at`` (survival at
        :data:`DURATION_DAYS`, None beyond the data), ``median_days`` (None
        when the curve never reaches 0.5) and ``median_reason``.
    """
    from lifelines import KaplanMeierFitter

    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    with warnings.catch_warnings():
        # lifelines warns about convergence of the NPMLE on ties it then resolves;
        # the result is checked below to be a proper non-increasing curve.
        warnings.simplefilter("ignore")
        kmf = KaplanMeierFitter().fit_interval_censoring(lower, upper)
    sf = kmf.survival_function_
    times = sf.index.to_numpy(dtype=float)
    # The NPMLE is set-valued inside its Turnbull intervals (a, b]. lifelines
    # gives a row at each end: at row b the "lower" column is the survival after
    # the interval, at row a both columns equal the survival before it. Reading
    # "lower" at the last row <= day therefore gives S(day) with the mass at the
    # right end of each interval: exact at every interval end, and "still
    # benefiting until the data show otherwise" inside an interval.
    values = sf["NPMLE_estimate_lower"].to_numpy(dtype=float)
    finite = np.concatenate([lower, upper[np.isfinite(upper)]])
    last = int(min(max_days, np.floor(finite.max()))) if finite.size else 0
    days = np.arange(0, last + 1)
    idx = np.searchsorted(times, days, side="right") - 1
    surv = np.where(idx >= 0, values[np.clip(idx, 0, None)], 1.0)
    surv = np.minimum.accumulate(np.clip(surv, 0.0, 1.0))
    below = np.flatnonzero(surv <= 0.5)
    median = int(days[below[0]]) if below.size else None
    at = {str(d): (round(float(surv[d]), 4) if d <= last else None) for d in DURATION_DAYS}
    return {
        "days": days.tolist(),
        "survival": np.round(surv, 4).tolist(),
        "at": at,
        "median_days": median,
        "median_reason": None
        if median is not None
        else f"more than half of the episodes still had the benefit at day {last}, the end "
        "of the data",
    }


def _episodes_with_attributes(cohort: Cohort, definition: OutcomeDefinition) -> pd.DataFrame:
    eps = build_episodes(cohort, definition)
    sess = cohort.sessions[["patient_id", "date", "route", "psychotherapy"]].drop_duplicates(
        ["patient_id", "date"], keep="last"
    )
    eps = eps.merge(
        sess.rename(columns={"date": "start"}), on=["patient_id", "start"], how="left"
    ).merge(cohort.patients[["patient_id", "diagnosis"]], on="patient_id", how="left")
    eps["route"] = eps["route"].fillna("not recorded")
    eps["diagnosis"] = eps["diagnosis"].fillna("not recorded")
    psy = eps["psychotherapy"].to_numpy(dtype=float)
    eps["psychotherapy"] = np.where(
        np.isnan(psy), "not recorded", np.where(psy == 1.0, "with psychotherapy", "without")
    )
    return eps


def _durations(eps: pd.DataFrame, by: str | None) -> list[dict[str, Any]]:
    groups = [("all episodes", eps)] if by is None else list(eps.groupby(by, sort=True))
    out = []
    for name, g in groups:
        entry: dict[str, Any] = {
            "group": str(name),
            "episodes": len(g),
            "patients": int(g["patient_id"].nunique()),
            "waned": int(g["event"].sum()),
        }
        if len(g) >= MIN_GROUP_EPISODES:
            entry["curve"] = turnbull_curve(g["lower"].to_numpy(), g["upper"].to_numpy())
        else:
            entry["curve"] = None
            entry["note"] = f"fewer than {MIN_GROUP_EPISODES} episodes: no curve"
        out.append(entry)
    return out


def _follow_up(cohort: Cohort) -> pd.DataFrame:
    s = cohort.sessions.groupby("patient_id")["date"].agg(["min", "max", "size"])
    a = cohort.assessments.groupby("patient_id")["date"].max().rename("a_max")
    f = s.join(a, how="left")
    end = f[["max", "a_max"]].max(axis=1)
    # A single-day follow-up still counts one day, so rates stay finite.
    f["years"] = ((end - f["min"]).dt.days + 1) / 365.25
    return f


def outcome_report(
    cohort: Cohort,
    definition: OutcomeDefinition | None = None,
    *,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Compute the clinic outcome report (JSON-able dict).

    Parameters
    ----------
    cohort : Cohort
        The clinic's canonical cohort.
    definition : OutcomeDefinition, optional
        Clinical definitions (the defaults of ``OutcomeDefinition`` when omitted).
    today : date, optional
        Date stamped on the report (default: today, UTC).

    Returns
    -------
    dict
        Sections ``cohort``, ``response``, ``durability``, ``sessions``,
        ``suicidal_ideation``, ``definition``, ``caveats``. Counts and
        aggregates only: no patient identifiers.
    """
    definition = definition or OutcomeDefinition()
    today = today or dt.datetime.now(dt.UTC).date()
    summ = patient_summary(cohort, definition)
    treated = summ["anchor_date"].notna()
    has_base = summ["baseline_phq9"].notna()
    scored = score_assessments(cohort.assessments)
    after = scored.merge(summ[["patient_id", "anchor_date"]], on="patient_id", how="left")
    post = after[(after["date"] > after["anchor_date"]) & after["phq9"].notna()]
    has_post = summ["patient_id"].isin(post["patient_id"].unique())
    evaluable = treated & has_base & has_post
    n_eval = int(evaluable.sum())
    responders = int((evaluable & summ["first_response_date"].notna()).sum())
    remitters = int((evaluable & summ["first_remission_date"].notna()).sum())

    dates = pd.concat([cohort.sessions["date"], cohort.assessments["date"]])
    report: dict[str, Any] = {
        "title": "Clinic outcome report",
        "generated": today.isoformat(),
        "cohort": {
            "patients": len(cohort.patients),
            "treated_patients": int(treated.sum()),
            "sessions": len(cohort.sessions),
            "assessments": len(cohort.assessments),
            "first_date": None if dates.empty else dates.min().date().isoformat(),
            "last_date": None if dates.empty else dates.max().date().isoformat(),
            "evaluable_patients": n_eval,
            "not_evaluable": {
                "no_session": int((~treated).sum()),
                "no_baseline": int((treated & ~has_base).sum()),
                "no_phq9_after_first_induction": int((treated & has_base & ~has_post).sum()),
            },
        },
        "response": {
            "response": _rate(responders, n_eval),
            "remission": _rate(remitters, n_eval),
            "current_state": {
                str(k): int(v) for k, v in summ.loc[treated, "current_state"].value_counts().items()
            },
            "baseline_phq9_median": _median(summ.loc[evaluable, "baseline_phq9"]),
            "best_phq9_median": _median(summ.loc[evaluable, "best_phq9"]),
        },
    }

    eps = _episodes_with_attributes(cohort, definition)
    report["durability"] = _durability_section(eps, definition)
    report["sessions"] = _sessions_section(cohort)
    report["suicidal_ideation"] = _si_section(scored, eps)
    report["definition"] = definition.to_dict()
    report["caveats"] = list(CAVEATS)
    return report


def _durability_section(eps: pd.DataFrame, definition: OutcomeDefinition) -> dict[str, Any]:
    """How long the benefit lasted: Turnbull curves overall and per group."""
    if len(eps):
        return {
            "overall": _durations(eps, None)[0],
            "by_route": _durations(eps, "route"),
            "by_diagnosis": _durations(eps, "diagnosis"),
            "by_psychotherapy": _durations(eps, "psychotherapy"),
            "waning_reasons": {
                str(k): int(v) for k, v in eps["event_reason"].dropna().value_counts().items()
            },
        }
    else:
        return {
            "overall": None,
            "note": "no episode: no session was followed by a response within "
            f"{definition.response_window_days} days",
        }


def _sessions_section(cohort: Cohort) -> dict[str, Any]:
    """Sessions per patient-year, overall and by kind."""
    fu = _follow_up(cohort)
    years = float(fu["years"].sum()) if len(fu) else 0.0
    kinds = cohort.sessions["kind"].value_counts()
    per_patient = (fu["size"] / fu["years"]).to_numpy(dtype=float) if len(fu) else np.array([])
    return {
        "patient_years": round(years, 2),
        "per_patient_year": None if years == 0 else round(len(cohort.sessions) / years, 2),
        "by_kind": {
            k: {
                "sessions": int(kinds.get(k, 0)),
                "per_patient_year": None if years == 0 else round(int(kinds.get(k, 0)) / years, 2),
            }
            for k in ("induction", "maintenance")
        },
        "per_patient_median": _median(pd.Series(per_patient)),
        "per_patient_iqr": None
        if per_patient.size == 0
        else [round(float(x), 2) for x in np.percentile(per_patient, [25, 75])],
    }


def _si_section(scored: pd.DataFrame, eps: pd.DataFrame) -> dict[str, Any]:
    """Counts of suicidal-ideation answers and flags on record."""
    i9 = scored["item9"].to_numpy(dtype=float)
    cs = scored["cssrs_ideation"].to_numpy(dtype=float)
    cb = scored["cssrs_behavior"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        i9pos, cspos, cbpos = i9 >= 1, cs >= 1, cb >= 1
    urgent = (scored["safety"] == URGENT).to_numpy()
    review = (scored["safety"] == REVIEW).to_numpy()
    pids = scored["patient_id"].to_numpy()
    return {
        "assessments_with_item9": int((~np.isnan(i9)).sum()),
        "item9_above_0": int(i9pos.sum()),
        "assessments_with_cssrs": int((~np.isnan(cs)).sum()),
        "cssrs_ideation_1_or_more": int(cspos.sum()),
        "cssrs_behavior": int(cbpos.sum()),
        "flags_review": int(review.sum()),
        "flags_urgent": int(urgent.sum()),
        "patients_with_any_flag": int(len(np.unique(pids[urgent | review]))),
        "episodes_ended_by_si": int(
            eps["event_reason"].isin(["item9", "cssrs_ideation"]).sum() if len(eps) else 0
        ),
        "statement": CAVEATS[2],
    }


#: Researcher-facing reports show no count from 1 to this value minus one.
MIN_CELL = 11
SUPPRESSED = f"<{MIN_CELL}"
# Integer members that are not counts of people or records (left as they are).
_NOT_COUNTS = frozenset({"median_days"})


def suppress_small_cells(report: Mapping[str, Any], min_cell: int = MIN_CELL) -> dict[str, Any]:
    """A researcher-facing copy of ``report``: small cells suppressed, dates as months.

    - every count from 1 to ``min_cell - 1`` (patients, sessions, answers,
      flags, episodes, states, reasons) becomes the string ``"<11"``; zero stays;
    - a rate whose count or denominator is suppressed loses its rate and
      interval; medians of fewer than ``min_cell`` patients are withheld;
    - a duration curve of fewer than ``min_cell`` episodes is withheld;
    - the first and last record dates become months (``YYYY-MM``).

    Primary suppression only: a suppressed cell may still be bounded from a
    total and its shown siblings; the report never names a patient.
    """
    out = json.loads(json.dumps(report))  # a deep copy of JSON values
    marker = f"<{min_cell}"

    def small(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v < min_cell

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "curve" in node and small(node.get("episodes")):
                node["curve"] = None
                node["note"] = f"fewer than {min_cell} episodes: no curve"
            if {"count", "of", "rate"} <= set(node) and (
                small(node["count"]) or small(node["of"]) or small(node["of"] - node["count"])
            ):
                node.update(rate=None, ci95=None)
            for key, value in node.items():
                if key in _NOT_COUNTS or key == "curve":
                    continue
                node[key] = marker if small(value) else walk(value)
        elif isinstance(node, list):
            return [walk(v) for v in node]
        return node

    for section in ("cohort", "response", "durability", "sessions", "suicidal_ideation"):
        if section in out:
            out[section] = walk(out[section])
    c = report.get("cohort", {})
    for key in ("first_date", "last_date"):
        if out.get("cohort", {}).get(key):
            out["cohort"][key] = str(out["cohort"][key])[:7]
    if small(c.get("evaluable_patients")):
        out["response"]["baseline_phq9_median"] = None
        out["response"]["best_phq9_median"] = None
    if small(c.get("treated_patients")):
        out["sessions"]["per_patient_median"] = None
        out["sessions"]["per_patient_iqr"] = None
    out["disclosure_control"] = (
        f"Counts from 1 to {min_cell - 1} are shown as {marker!r}; rates, medians and curves "
        f"of fewer than {min_cell} are withheld; dates are months."
    )
    return out


def _median(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return None if s.empty else round(float(s.median()), 2)


# --- rendering -------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _curve_figure(title: str, groups: Sequence[Mapping[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    drawn = 0
    for g in groups:
        c = g.get("curve")
        if not c:
            continue
        ax.step(c["days"], c["survival"], where="post", label=f"{g['group']} (n={g['episodes']})")
        drawn += 1
    ax.axhline(0.5, color="#999", lw=0.8, ls=":")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("days after the session that started the episode")
    ax.set_ylabel("still benefiting")
    ax.set_title(title, fontsize=11)
    if drawn:
        ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _png(fig)


def _rates_figure(resp: Mapping[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    names = ["response", "remission"]
    vals = [resp[n]["rate"] or 0.0 for n in names]
    ci = [resp[n]["ci95"] or [0.0, 0.0] for n in names]
    err = np.array(
        [
            [v - c[0] for v, c in zip(vals, ci, strict=True)],
            [c[1] - v for v, c in zip(vals, ci, strict=True)],
        ]
    )
    ax.bar(names, vals, yerr=err, capsize=6, color=["#3a6ea5", "#5a9e6f"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of evaluable patients")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _rate_text(r: Mapping[str, Any]) -> str:
    if isinstance(r["count"], str) or isinstance(r["of"], str) or (r["rate"] is None and r["of"]):
        return f"{r['count']} of {r['of']} (suppressed: small numbers)"
    if r["rate"] is None:
        return "n/a (no evaluable patient)"
    lo, hi = r["ci95"]
    return f"{r['count']} of {r['of']} ({_pct(r['rate'])}; 95 % CI {_pct(lo)}-{_pct(hi)})"


def _html_head(report: Mapping[str, Any]) -> list[str]:
    """Document head, title, record period, caveats and the patients table."""
    c = report["cohort"]
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>Clinic outcome report</title><style>",
        "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;"
        "margin:1rem auto;padding:0 1rem;color:#1d232b;line-height:1.45}",
        "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccd;"
        "padding:.25rem .6rem;text-align:left}th{background:#eef1f6}",
        "img{max-width:100%;height:auto}.note{background:#f4f6f9;border-left:4px solid #7a8ca5;"
        "padding:.6rem 1rem}.grid{display:flex;flex-wrap:wrap;gap:1rem}",
        "</style></head><body>",
        "<h1>Clinic outcome report</h1>",
        f"<p>Generated {html.escape(report['generated'])}. Records from "
        f"{html.escape(str(c['first_date']))} to {html.escape(str(c['last_date']))}.</p>",
        "<p class='note'>Decision support for the clinic. "
        + " ".join(html.escape(x) for x in report["caveats"][:2])
        + "</p>",
        (
            f"<p class='note'>{html.escape(report['disclosure_control'])}</p>"
            if report.get("disclosure_control")
            else ""
        ),
        "<h2>Patients</h2>",
        _table(
            [
                ["patients", c["patients"]],
                ["treated (at least one session)", c["treated_patients"]],
                [
                    "evaluable (baseline and a PHQ-9 after the first induction)",
                    c["evaluable_patients"],
                ],
                ["not evaluable: no baseline", c["not_evaluable"]["no_baseline"]],
                [
                    "not evaluable: no PHQ-9 after the first induction",
                    c["not_evaluable"]["no_phq9_after_first_induction"],
                ],
                ["sessions", c["sessions"]],
                ["assessments", c["assessments"]],
            ],
            ["", "count"],
        ),
    ]


def _html_response(r: Mapping[str, Any]) -> list[str]:
    return [
        "<h2>Response and remission</h2>",
        "<div class='grid'><div>",
        _table(
            [
                ["response (PHQ-9 &le; 50 % of baseline)", _rate_text(r["response"])],
                ["remission (PHQ-9 &lt; 5)", _rate_text(r["remission"])],
                ["median baseline PHQ-9", r["baseline_phq9_median"]],
                ["median best PHQ-9 after the first induction", r["best_phq9_median"]],
            ],
            ["outcome", "patients"],
        )
        .replace("&amp;le;", "&le;")
        .replace("&amp;lt;", "&lt;"),
        "</div>",
        f"<img alt='response and remission rates' src='data:image/png;base64,"
        f"{_rates_figure(r)}'></div>",
    ]


def _html_durability(dur: Mapping[str, Any]) -> list[str]:
    """How long the benefit lasted: overall and per group, tables and curves."""
    parts = ["<h2>How long the benefit lasted</h2>"]
    if dur.get("overall"):
        o = dur["overall"]
        oc = o["curve"]
        med = (
            f"{oc['median_days']} days"
            if oc and oc["median_days"] is not None
            else (oc["median_reason"] if oc else "n/a")
        )
        parts.append(
            f"<p>{o['episodes']} episodes of {o['patients']} patients; {o['waned']} ended with "
            f"the benefit waning. Median duration: {html.escape(str(med))}.</p>"
        )
        rows = []
        for key, label in (
            ("by_route", "route"),
            ("by_diagnosis", "diagnosis"),
            ("by_psychotherapy", "psychotherapy"),
        ):
            for g in dur[key]:
                at = (g["curve"] or {}).get("at", {})
                rows.append(
                    [label, g["group"], g["episodes"], g["waned"]]
                    + [_pct(at.get(str(d))) if g["curve"] else "-" for d in DURATION_DAYS]
                )
        parts.append(
            _table(
                [
                    ["overall", "all", o["episodes"], o["waned"]]
                    + [_pct((oc or {}).get("at", {}).get(str(d))) for d in DURATION_DAYS]
                ]
                + rows,
                ["by", "group", "episodes", "waned"]
                + [f"still benefiting at day {d}" for d in DURATION_DAYS],
            )
        )
        for key, title in (
            ("by_route", "By route"),
            ("by_diagnosis", "By diagnosis"),
            ("by_psychotherapy", "By psychotherapy attached to the session"),
        ):
            parts.append(
                f"<h3>{title}</h3><img alt='{title.lower()}' src='data:image/png;base64,"
                f"{_curve_figure(title, [o, *dur[key]])}'>"
            )
    else:
        parts.append(f"<p>{html.escape(dur.get('note', 'no episodes'))}</p>")
    return parts


def _html_sessions_and_si(s: Mapping[str, Any], si: Mapping[str, Any]) -> list[str]:
    return [
        "<h2>Sessions</h2>",
        _table(
            [
                ["patient-years of follow-up", s["patient_years"]],
                ["sessions per patient-year", s["per_patient_year"]],
                [
                    "induction sessions per patient-year",
                    s["by_kind"]["induction"]["per_patient_year"],
                ],
                [
                    "maintenance sessions per patient-year",
                    s["by_kind"]["maintenance"]["per_patient_year"],
                ],
                ["median per patient (IQR)", f"{s['per_patient_median']} ({s['per_patient_iqr']})"],
            ],
            ["", "value"],
        ),
        "<h2>Suicidal-ideation answers on record</h2>",
        f"<p class='note'>{html.escape(si['statement'])}</p>",
        _table(
            [
                [
                    "PHQ-9 item 9 above 0",
                    f"{si['item9_above_0']} of {si['assessments_with_item9']}",
                ],
                [
                    "C-SSRS ideation level 1 or more",
                    f"{si['cssrs_ideation_1_or_more']} of {si['assessments_with_cssrs']}",
                ],
                ["C-SSRS suicidal behaviour", si["cssrs_behavior"]],
                ["review flags", si["flags_review"]],
                ["urgent flags", si["flags_urgent"]],
                ["patients with any flag", si["patients_with_any_flag"]],
                [
                    "episodes that ended with re-emerging suicidal ideation",
                    si["episodes_ended_by_si"],
                ],
            ],
            ["assessments", "count"],
        ),
    ]


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and base64 PNG plots)."""
    parts = [
        *_html_head(report),
        *_html_response(report["response"]),
        *_html_durability(report["durability"]),
        *_html_sessions_and_si(report["sessions"], report["suicidal_ideation"]),
        "<h2>Definitions</h2>",
        _table([[k, v] for k, v in report["definition"].items()], ["setting", "value"]),
        "<h2>Caveats</h2><ul>",
        *(f"<li>{html.escape(x)}</li>" for x in report["caveats"]),
        "</ul></body></html>",
    ]
    return "\n".join(parts)


def write_report(report: Mapping[str, Any], out: Path | str) -> Path:
    """Write ``report.json`` and ``report.html`` into the folder ``out``; return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    return out
