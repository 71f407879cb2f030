"""The single answer at the point of care: coverage, calibration, discrimination, shape.

Trains the default model on a simulated cohort and forecasts a held-out cohort
of the same mechanism at one as-of date, for the patients in active care (last
PHQ-9 at most 42 days old, a session in the last 180 days, latent benefit not
yet waned), twice: from the full histories and from their totals-only version
(no dose, route, psychotherapy, dissociation, item answers or C-SSRS: what many
EHR exports and CDS prefetches carry). Per assessment schedule (the
simulator's ``schedule`` option, when it has one) it prints:

* coverage: the share with a personalised forecast (target >= 0.95);
* calibration in the large at 28 and 56 days: mean predicted risk minus the
  observed rate of waning by the project's outcome rules in the full test
  history (Turnbull estimate over the interval-censored observations, what the
  model predicts), and minus the latent rate ``T <= t + h`` of the simulator's
  benefit clock (``citl_latent``: the simulator's durations differ from the
  observable definition, e.g. SI answers count as waning);
* ICI at 28 and 56 days against the latent outcome;
* AUC(28) of the model and of the oracle (the true conditional risk);
* how far the totals-only answers move the 28-day risk (median, 90th
  percentile; target <= 0.08) and their calibration (target |CITL| <= 0.03);
* the largest one-day rise of any daily risk curve (target <= 0.10);
* with several schedules, how far the same latent patients' 28-day risks lie
  apart between schedules (target within 0.03).

Usage: ``python bench/point_of_care.py [--train 3000] [--test 3000] [--seed 11]
[--schedules weekly,at-visit,sparse]``. Writes bench/out/point_of_care.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from forecast import registry
from forecast.cohort import Cohort
from forecast.contract import PHQ9_ITEMS
from forecast.episodes import build_episodes
from forecast.instruments import phq9_from_items
from forecast.models.nonparametric import turnbull_risk
from forecast.policy import PolicySettings, forecast_queries
from forecast.simulation import simulate, truth_location
from forecast.training import train_and_save

OUT = Path(__file__).resolve().parent / "out" / "point_of_care.json"
HORIZONS = (28, 56)
PERSONAL = ("routine", "session_due", "urgent_review", "safety_review")


def totals_only(cohort: Cohort) -> Cohort:
    """The cohort as a totals-only export: PHQ-9 totals, session dates and kinds."""
    s = cohort.sessions.copy()
    for c in ("dose_mg_per_kg", "route", "psychotherapy", "dissociation", "systolic_bp_max"):
        if c in s:
            s[c] = None if s[c].dtype == object else np.nan
    a = cohort.assessments.copy()
    items = a[list(PHQ9_ITEMS)].to_numpy(dtype=float)
    total, _ = phq9_from_items(items)
    a["phq9_total"] = np.where(np.isnan(total), a["phq9_total"].to_numpy(dtype=float), total)
    for c in (*PHQ9_ITEMS, "cssrs_ideation", "cssrs_behavior"):
        a[c] = np.nan
    a = a[a["phq9_total"].notna()].reset_index(drop=True)
    return Cohort(cohort.patients, s, a, covariates=cohort.covariates)


def _survival(x: np.ndarray, location: np.ndarray, scale: float) -> np.ndarray:
    """Survival of the simulator's log-logistic benefit duration (cf. ``true_risk``)."""
    with np.errstate(divide="ignore"):
        z = (np.log(np.maximum(x, 0.0)) - location) / scale
    return 1.0 / (1.0 + np.exp(z))


def active_care(sim: Any, as_of: pd.Timestamp) -> pd.DataFrame:
    """Patients in active care at ``as_of`` with their latent clock and outcomes.

    In active care: last PHQ-9 at most 42 days old and a session in the last
    180 days. Whether the benefit has visibly waned is read from the answer
    (status ``not_in_response``, or a latest PHQ-9 >= 10 out of response:
    such patients leave the denominator). The latent outcome is
    ``T <= t + h`` for the benefit clock current at ``as_of`` (``t`` days
    into it), which counts a waning after the last reassuring score and
    before ``as_of``, as the forecast does; the oracle is ``P(T <= t + h | T >
    t_L)``, ``t_L`` the day of the last PHQ-9 on the clock (0 if none).
    """
    c = sim.cohort
    a = c.assessments[(c.assessments["date"] <= as_of) & c.assessments["phq9_total"].notna()
                      | (c.assessments["date"] <= as_of) & c.assessments["phq9_1"].notna()]
    s = c.sessions[c.sessions["date"] <= as_of]
    last_a = a.groupby("patient_id")["date"].max()
    last_s = s.groupby("patient_id")["date"].max()
    t = sim.truth.assign(start=pd.to_datetime(sim.truth["episode_start"]))
    t = t[t["start"] <= as_of].sort_values(["patient_id", "start"])
    t = t.groupby("patient_id").tail(1).set_index("patient_id")
    ids = sorted(set(last_a.index) & set(last_s.index) & set(t.index))
    out = pd.DataFrame({"patient_id": ids})
    start = t.loc[ids, "start"]
    t_a = (as_of - start).dt.days.to_numpy(dtype=float)
    t_l = np.clip((last_a.loc[ids] - start).dt.days.to_numpy(dtype=float), 0.0, t_a)
    big_t = t.loc[ids, "latent_wane_days"].to_numpy(dtype=float)
    keep = ((as_of - last_a.loc[ids]).dt.days.to_numpy() <= 42) & (
        (as_of - last_s.loc[ids]).dt.days.to_numpy() <= 180
    )
    loc = truth_location(t.loc[ids].reset_index(), sim.params.wane_scale)
    s_l = _survival(t_l, loc, sim.params.wane_scale)
    for h in HORIZONS:
        out[f"latent_{h}"] = (big_t <= t_a + h).astype(float)
        out[f"oracle_{h}"] = 1.0 - _survival(t_a + h, loc, sim.params.wane_scale) / s_l
    return out[keep].reset_index(drop=True)


def observed_intervals(sim: Any, as_of: pd.Timestamp, ids: pd.Series) -> pd.DataFrame:
    """Observed waning after ``as_of`` by the project's outcome rules, as intervals.

    From the full history: the episode current at ``as_of`` (it starts at the
    last session on or before it); its waning lies in ``(left, right]`` days
    after ``as_of`` (``left`` 0 when the last event-free score precedes
    ``as_of``; ``right`` inf when censored). Patients whose current session
    started no episode, or whose waning was seen by ``as_of``, are left out.
    """
    ep = build_episodes(sim.cohort)
    ep = ep[ep["start"] <= as_of].sort_values(["patient_id", "start"])
    cur = ep.groupby("patient_id").tail(1).set_index("patient_id")
    s = sim.cohort.sessions
    last_s = s[s["date"] <= as_of].groupby("patient_id")["date"].max()
    out = pd.DataFrame({"patient_id": ids})
    pid = out["patient_id"]
    start = pd.to_datetime(pid.map(cur["start"]))
    lower = pid.map(cur["lower"]).to_numpy(dtype=float)
    upper = pid.map(cur["upper"]).to_numpy(dtype=float)
    lo_day = (start + pd.to_timedelta(np.nan_to_num(lower), unit="D") - as_of).dt.days
    up_day = (start + pd.to_timedelta(np.where(np.isfinite(upper), upper, 0), unit="D")
              - as_of).dt.days
    out["left"] = np.maximum(lo_day.to_numpy(dtype=float), 0.0)
    out["right"] = np.where(np.isfinite(upper), up_day.to_numpy(dtype=float), np.inf)
    usable = start.notna().to_numpy() & (start == pid.map(last_s)).to_numpy()
    usable &= out["right"].to_numpy() > 0
    return out[usable].reset_index(drop=True)


def ici(p: np.ndarray, y: np.ndarray) -> float:
    """Integrated calibration index of binary outcomes: mean |p - smoothed observed|.

    The smoother is a logistic regression on a restricted cubic spline of
    logit(p) with knots at the 10th, 50th and 90th percentiles (Austin &
    Steyerberg 2019).
    """
    p = np.clip(p, 1e-6, 1 - 1e-6)
    x = np.log(p / (1 - p))
    k = np.percentile(x, [10, 50, 90])

    def cube(v: np.ndarray) -> np.ndarray:
        return np.maximum(v, 0.0) ** 3

    spline = (
        cube(x - k[0])
        - cube(x - k[1]) * (k[2] - k[0]) / (k[2] - k[1])
        + cube(x - k[2]) * (k[1] - k[0]) / (k[2] - k[1])
    ) / (k[2] - k[0]) ** 2
    design = np.column_stack([x, spline])
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(design, y)
    return float(np.mean(np.abs(p - fit.predict_proba(design)[:, 1])))


def answers_table(answers: list[dict]) -> pd.DataFrame:
    rows = []
    for a in answers:
        risk = a.get("risk") or {}
        personal = risk.get("kind") == "personalised" and a["status"] in PERSONAL
        by_h = {h["days"]: h["risk"] for h in risk.get("horizons", [])}
        daily = np.asarray(risk.get("daily", {}).get("risk") or [np.nan], dtype=float)
        # Day-to-day increments (day 1 itself carries any waning not yet seen).
        rise = float(np.nanmax(np.diff(daily))) if personal and len(daily) > 1 else np.nan
        cur = a.get("current") or {}
        # Visibly waned by the latest score: no longer in response and PHQ-9 >= 10.
        waned = a["status"] == "not_in_response" or (
            cur.get("response_state") == "not_in_response" and (cur.get("phq9") or 0) >= 10
        )
        rows.append(
            {
                "patient_id": a["patient_id"],
                "personal": personal,
                "waned_now": waned,
                "status": a["status"],
                **{f"risk_{h}": by_h.get(h) if personal else np.nan for h in HORIZONS},
                "max_daily_rise": rise,
            }
        )
    return pd.DataFrame(rows)


def figures(care: pd.DataFrame, got: pd.DataFrame, obs: pd.DataFrame) -> dict[str, Any]:
    m = care.merge(got, on="patient_id")
    m = m[~m["waned_now"]]  # visibly waned: no maintenance forecast applies
    cov = float(m["personal"].mean()) if len(m) else float("nan")
    p = m[m["personal"]]
    out: dict[str, Any] = {"n_active_care": int(len(m)), "coverage": cov}
    for h in HORIZONS:
        pred = p[f"risk_{h}"].to_numpy(dtype=float)
        lat = p[f"latent_{h}"].to_numpy(dtype=float)
        out[f"citl_latent_{h}"] = float(np.mean(pred) - np.mean(lat))
        # The reference's own check: the true conditional risk against the same outcome.
        out[f"citl_oracle_latent_{h}"] = float(np.mean(p[f"oracle_{h}"]) - np.mean(lat))
        o = p.merge(obs, on="patient_id")
        rate = float(turnbull_risk(o["left"].to_numpy(), o["right"].to_numpy(), [h])[0])
        out[f"citl_{h}"] = float(o[f"risk_{h}"].mean() - rate)
        out[f"ici_{h}"] = ici(pred, lat)
        out[f"auc_{h}"] = float(roc_auc_score(lat, pred))
        out[f"auc_oracle_{h}"] = float(roc_auc_score(lat, p[f"oracle_{h}"]))
    out["max_daily_rise"] = float(np.nanmax(p["max_daily_rise"]))
    return out


def run_schedule(args: argparse.Namespace, schedule: str | None, work: Path) -> dict[str, Any]:
    kw = {} if schedule is None else {"schedule": schedule}
    t0 = time.perf_counter()
    train = simulate(args.train, args.seed, **kw)
    models = work / f"models-{schedule or 'default'}"
    version = train_and_save(train.cohort, models, n_bootstrap=0, seed=args.seed, simulated=True)
    model = registry.load(version, models)
    test = simulate(args.test, args.seed + 1000, **kw)
    as_of = pd.Timestamp(test.end_date) - pd.Timedelta(days=args.lookback)
    care = active_care(test, as_of)
    obs = observed_intervals(test, as_of, care["patient_id"])
    q = pd.DataFrame({"patient_id": care["patient_id"], "as_of": as_of})
    settings = PolicySettings()
    full = answers_table(forecast_queries(test.cohort, model, q, settings))
    tot = answers_table(forecast_queries(totals_only(test.cohort), model, q, settings))
    both = full.merge(tot, on="patient_id", suffixes=("", "_tot"))
    both = both[both["personal"] & both["personal_tot"]]
    move = np.abs(both["risk_28"] - both["risk_28_tot"]).to_numpy(dtype=float)
    return {
        "schedule": schedule or "default",
        "as_of": f"{as_of:%Y-%m-%d}",
        "full": figures(care, full, obs),
        "totals_only": figures(care, tot, obs),
        "totals_only_move_28": {
            "median": float(np.median(move)) if len(move) else None,
            "p90": float(np.percentile(move, 90)) if len(move) else None,
        },
        "risk_28": full.set_index("patient_id")["risk_28"].dropna().to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=3000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--lookback", type=int, default=60, help="as-of = end date - this many days")
    p.add_argument("--schedules", default=None,
                   help="comma-separated simulator schedules (default: the simulator's default)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    schedules: list[str | None] = [None]
    if args.schedules:
        if "schedule" not in inspect.signature(simulate).parameters:
            print("this simulator has no schedule option", file=sys.stderr)
            return 2
        schedules = [s.strip() for s in args.schedules.split(",")]
    with tempfile.TemporaryDirectory(prefix="point_of_care_") as tmp:
        runs = [run_schedule(args, s, Path(tmp)) for s in schedules]
    result: dict[str, Any] = {"runs": [{k: v for k, v in r.items() if k != "risk_28"}
                                       for r in runs]}
    if len(runs) > 1:
        # The same latent patients (same seed) under each schedule.
        base = pd.Series(runs[0]["risk_28"])
        for r in runs[1:]:
            d = (pd.Series(r["risk_28"]) - base).dropna().abs()
            result.setdefault("between_schedules_28", {})[
                f"{runs[0]['schedule']} vs {r['schedule']}"
            ] = {"n": int(len(d)), "median": float(d.median()), "p90": float(d.quantile(0.9))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["runs"]:
        print(f"schedule {r['schedule']} (as of {r['as_of']}, {r['seconds']:.0f} s)")
        for name in ("full", "totals_only"):
            f = r[name]
            print(
                f"  {name:12s} n {f['n_active_care']:5d}  coverage {f['coverage']:.3f}  "
                f"CITL28 {f['citl_28']:+.3f}  CITL56 {f['citl_56']:+.3f}  "
                f"(latent {f['citl_latent_28']:+.3f} / {f['citl_latent_56']:+.3f}; oracle vs "
                f"latent {f['citl_oracle_latent_28']:+.3f} / {f['citl_oracle_latent_56']:+.3f})  "
                f"ICI28 {f['ici_28']:.3f}  ICI56 {f['ici_56']:.3f}  "
                f"AUC28 {f['auc_28']:.3f} (oracle {f['auc_oracle_28']:.3f})  "
                f"max 1-day rise {f['max_daily_rise']:.3f}"
            )
        mv = r["totals_only_move_28"]
        print(f"  totals-only moves risk_28 by median {mv['median']:.3f}, p90 {mv['p90']:.3f}")
    for k, v in result.get("between_schedules_28", {}).items():
        print(f"  {k}: |risk_28 difference| median {v['median']:.3f}, p90 {v['p90']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
