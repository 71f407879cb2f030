"""Calibration and discrimination of ``forecast train``/``predict`` on a foreign generator.

Generates a training and a test cohort with ``bench/foreign_generator.py`` (an
independent mechanism: Weibull benefit durations, different covariate effects,
fortnightly/monthly clinics, totals-only PHQ-9 in one clinic, no C-SSRS in two,
fixed-interval boosters plus boosters after observed relapses), trains the
default model with ``forecast train --bootstrap 0``, truncates the test cohort
at a common as-of date A (= end date - 120 days), runs ``forecast predict`` at
A and compares, for the patients with a personalised forecast
(status routine/session_due):

* mean predicted ``risk_28d``/``risk_56d`` with the OBSERVED rate of waning
  within 28/56 days after A, determined from the full test history with the
  project's outcome rules (``forecast.episodes.build_episodes``): the event is
  an event assessment of the current episode dated in (A, A+h]. Follow-up is
  censored at the episode's last event-free assessment when the next session
  or the end of data comes first; the observed rate is the Kaplan-Meier
  estimate ``1 - S(h)`` over the predicted patients (primary), and the
  complete-case rate (censored-before-h excluded) is also shown;
* AUC of ``risk_28d`` for the observed 28-day outcome (complete cases) and
  Harrell's C on (time after A, event), and the same for the generator's
  oracle risk ``P(T <= t_A + h | T > t_A)`` (t_A = days since the latent
  benefit clock started, Weibull parameters from truth.csv).

Population (``--population``): ``followed`` (default) keeps the predicted
patients who have an assessment dated after A in the full history (patients
who dropped out before A have no observable outcome, and their censoring is
informative: the longer the gap since their last assessment, the higher their
latent risk); ``all`` keeps every predicted patient.

Usage: ``python bench/foreign_check.py [--train 4000] [--test 4000] [--seed 7]
[--kind dynamic] [--penalizer auto]``.
Writes bench/out/foreign_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import foreign_generator as fg  # noqa: E402

from forecast.data import load_cohort  # noqa: E402
from forecast.episodes import build_episodes  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "foreign_check.json"
HORIZONS = (28, 56)


def _forecast(*args: str) -> str:
    exe = Path(sys.executable).parent / "forecast"
    proc = subprocess.run([str(exe), *args], check=True, capture_output=True, text=True)
    return proc.stdout.strip()


def truncate(src: Path, dst: Path, as_of: str) -> None:
    """Copy the contract files of ``src`` keeping rows dated <= ``as_of``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("patients", "sessions", "assessments"):
        df = pd.read_csv(src / f"{name}.csv", dtype=str, keep_default_na=False)
        if "date" in df.columns:
            df = df[df["date"] <= as_of]
        df.to_csv(dst / f"{name}.csv", index=False, lineterminator="\n")


def km_risk(time: np.ndarray, event: np.ndarray, h: float) -> float:
    """Kaplan-Meier ``1 - S(h)``; censored at time <= 0 leave before any event."""
    s = 1.0
    for t in np.unique(time[event & (time <= h)]):
        at_risk = np.sum(time >= t)
        d = np.sum((time == t) & event)
        if at_risk:
            s *= 1.0 - d / at_risk
    return 1.0 - s


def turnbull_risk(left: np.ndarray, right: np.ndarray, h: float, iters: int = 2000) -> float:
    """Turnbull NPMLE of ``P(X <= h)`` for interval-censored ``X in (left, right]``.

    Support: whole days 1..max finite right, plus one mass at infinity.
    """
    finite = right[np.isfinite(right)]
    top = int(finite.max()) if len(finite) else 1
    grid = np.append(np.arange(1, top + 1, dtype=float), np.inf)
    alpha = (grid[None, :] > left[:, None]) & (grid[None, :] <= right[:, None])
    alpha = alpha[alpha.any(axis=1)].astype(float)
    p = np.full(len(grid), 1.0 / len(grid))
    for _ in range(iters):
        denom = alpha @ p
        new = p * (alpha / denom[:, None]).mean(axis=0)
        if np.max(np.abs(new - p)) < 1e-9:
            p = new
            break
        p = new
    return float(p[grid <= h].sum())


def auc(score: np.ndarray, case: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count one half)."""
    pos, neg = score[case], score[~case]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: higher risk should go with an earlier event."""
    conc = ties = n = 0.0
    for i in np.flatnonzero(event):
        comp = time > time[i]
        n += comp.sum()
        conc += np.sum(risk[i] > risk[comp])
        ties += np.sum(risk[i] == risk[comp])
    return float((conc + 0.5 * ties) / n) if n else float("nan")


def observed(full: Path, preds: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Observed time (days after A) and event of the episode current at A."""
    cohort = load_cohort(full)
    ep = build_episodes(cohort)
    ep = ep[ep["start"] <= as_of].sort_values(["patient_id", "start"])
    cur = ep.groupby("patient_id").tail(1).set_index("patient_id")
    ses = cohort.sessions
    last_ses = ses[ses["date"] <= as_of].groupby("patient_id")["date"].max()
    out = preds[["patient_id"]].copy()
    pid = out["patient_id"]
    start = pid.map(cur["start"])
    lower = pid.map(cur["lower"]).astype(float)
    upper = pid.map(cur["upper"]).astype(float)
    event = np.isfinite(upper.to_numpy())
    end = np.where(event, upper, lower)
    end_date = start + pd.to_timedelta(np.nan_to_num(end), unit="D")
    out["time"] = (end_date - as_of).dt.days.astype(float)
    out["event"] = event
    low_date = start + pd.to_timedelta(np.nan_to_num(lower.to_numpy()), unit="D")
    # latent wane time after A lies in (left, right]; a wane between the last
    # event-free assessment and A counts as "waned within h days after A"
    out["left"] = np.maximum((low_date - as_of).dt.days.to_numpy(dtype=float), 0.0)
    out["right"] = np.where(event, out["time"], np.inf)
    # usable: the current episode starts at the last session on or before A, and
    # its event was not already observed on or before A
    out["usable"] = (start.notna() & (start == pid.map(last_ses))).to_numpy() & ~(
        event & (out["time"] <= 0)
    )
    out.loc[~out["usable"], "time"] = np.nan
    return out


def current_clock(truth: pd.DataFrame, pids: pd.Series, as_of: pd.Timestamp) -> pd.DataFrame:
    """The generator's latent benefit clock current at ``as_of`` for each of ``pids``."""
    t = truth.assign(start=pd.to_datetime(truth["start"]))
    t = t[t["start"] <= as_of].sort_values(["patient_id", "start"]).groupby("patient_id").tail(1)
    return t.set_index("patient_id").reindex(pids)


def oracle(
    truth: pd.DataFrame, pids: pd.Series, as_of: pd.Timestamp, seen: pd.Series
) -> dict[str, dict[int, np.ndarray]]:
    """Oracle risks and latent outcomes of the clock current at ``as_of``.

    ``seen`` = date of each patient's last event-free assessment (what the
    forecast conditions on). Returns ``{"at_as_of": P(T <= t_A + h | T > t_A),
    "at_seen": P(T <= t_A + h | T > t_L), "latent": 1{T <= t_A + h}}`` per
    horizon, t_A / t_L = days from the clock start to A / to the last
    event-free assessment. The latent indicator needs no censoring model: the
    generator draws every clock's duration even when a booster comes first.
    """
    t = current_clock(truth, pids, as_of)
    t_a = (as_of - t["start"]).dt.days.to_numpy(dtype=float)
    t_l = (pd.to_datetime(seen.to_numpy()) - pd.DatetimeIndex(t["start"])).days.to_numpy(float)
    t_l = np.clip(np.nan_to_num(t_l, nan=0.0), 0.0, t_a)
    ls = t["log_scale"].to_numpy()
    big_t = t["T"].to_numpy(dtype=float)
    s = lambda x: 1.0 - fg.weibull_cdf(x, ls, fg.SHAPE)  # noqa: E731
    out = {
        "at_as_of": {h: fg.conditional_risk(t_a, h, ls, fg.SHAPE) for h in HORIZONS},
        "at_seen": {h: 1.0 - s(t_a + h) / np.maximum(s(t_l), 1e-300) for h in HORIZONS},
        "latent": {h: (big_t <= t_a + h).astype(float) for h in HORIZONS},
    }
    if "depth" in t.columns:
        ls_no_z = ls - t["z"].to_numpy(dtype=float)
        dep = t["depth"].to_numpy(dtype=float)
        out["depth_oracle"] = {
            h: fg.depth_oracle_risk(t_l, t_a + h, ls_no_z, dep) for h in HORIZONS
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=4000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--end", default="2026-06-30")
    p.add_argument("--lookback", type=int, default=120, help="A = end - lookback days")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--penalizer", default="auto", help="forecast train --penalizer")
    p.add_argument("--kind", default=None, help="forecast train --kind (default: the default)")
    p.add_argument(
        "--population",
        choices=("followed", "all"),
        default="followed",
        help="evaluate predicted patients with an assessment after A (default) or all",
    )
    args = p.parse_args(argv)
    if args.kind is None:
        from forecast.bundle import DEFAULT_KIND

        args.kind = DEFAULT_KIND
    end = pd.Timestamp(args.end)
    as_of = end - pd.Timedelta(days=args.lookback)
    a_str = as_of.strftime("%Y-%m-%d")
    timings = {}
    with tempfile.TemporaryDirectory(prefix="foreign_check_") as tmp:
        work = Path(tmp)
        train, test, trunc, models = work / "train", work / "test", work / "trunc", work / "models"
        t0 = time.perf_counter()
        fg.write(fg.generate(args.train, args.seed, end), train)
        test_frames = fg.generate(args.test, args.seed + 1000, end)
        fg.write(test_frames, test)
        for d in (train, test):
            _forecast("validate", str(d))
        timings["generate_validate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        version = _forecast(
            "train",
            str(train),
            "--models",
            str(models),
            "--bootstrap",
            "0",
            "--seed",
            str(args.seed),
            "--jobs",
            str(args.jobs),
            "--penalizer",
            str(args.penalizer),
            "--kind",
            args.kind,
        )
        timings["train_s"] = time.perf_counter() - t0
        card = json.loads((models / version / "bundle.json").read_text())
        family = card["family"]
        rejected = sorted((card.get("meta", {}).get("family_selection") or {})
                          .get("rejected_by_lifelines", {}))
        truncate(test, trunc, a_str)
        t0 = time.perf_counter()
        _forecast(
            "predict",
            str(trunc),
            "--model",
            "latest",
            "--models",
            str(models),
            "--as-of",
            a_str,
            "--out",
            str(work / "preds.csv"),
        )
        timings["predict_s"] = time.perf_counter() - t0
        preds = pd.read_csv(work / "preds.csv", dtype={"patient_id": str})
        status_counts = preds["status"].value_counts().to_dict()
        pr = preds[preds["status"].isin(["routine", "session_due"])].reset_index(drop=True)
        obs = observed(test, pr, as_of)
        ass = test_frames["assessments"]
        ass_dates = pd.to_datetime(ass["date"])
        seen = ass[ass_dates <= as_of].groupby("patient_id")["date"].max()
        truth_at = oracle(test_frames["truth"], pr["patient_id"], as_of,
                          pr["patient_id"].map(seen))
        orc = truth_at["at_as_of"]
    use = obs["usable"].to_numpy()
    # "followed": the patient has an assessment dated after A in the full history
    # (drop-outs before A have no observable outcome; their latent risk differs)
    a_dates = pd.to_datetime(test_frames["assessments"]["date"])
    later = set(test_frames["assessments"]["patient_id"][a_dates > as_of])
    followed = pr["patient_id"].isin(later).to_numpy()
    if args.population == "followed":
        use = use & followed
    time_a = obs["time"].to_numpy()[use]
    ev = obs["event"].to_numpy()[use]
    left, right = obs["left"].to_numpy()[use], obs["right"].to_numpy()[use]
    rows: dict[str, dict] = {}
    for h in HORIZONS:
        risk = pr[f"risk_{h}d"].to_numpy(dtype=float)[use]
        ora = orc[h][use]
        case = ev & (time_a <= h)
        known = case | (time_a > h)
        lat_case = right <= h
        lat_known = lat_case | (left >= h)
        lat = truth_at["latent"][h]
        ora_l = truth_at["at_seen"][h]
        risk_all = pr[f"risk_{h}d"].to_numpy(dtype=float)
        rows[f"{h}d"] = {
            "n_predicted": int(len(pr)),
            "latent_rate_evaluated": float(np.mean(lat[use])),
            "latent_rate_all": float(np.mean(lat)),
            "mean_oracle_seen": float(np.mean(ora_l[use])),
            "auc_model_truth": auc(risk, lat[use] > 0),
            "auc_oracle_truth": auc(ora_l[use], lat[use] > 0),
            "auc_model_truth_all": auc(risk_all, lat > 0),
            "auc_oracle_truth_all": auc(ora_l, lat > 0),
            "auc_depth_oracle_truth": auc(truth_at["depth_oracle"][h][use], lat[use] > 0),
            "auc_depth_oracle_truth_all": auc(truth_at["depth_oracle"][h], lat > 0),
            "mean_depth_oracle": float(np.mean(truth_at["depth_oracle"][h][use])),
            "n_usable": int(use.sum()),
            "n_complete": int(known.sum()),
            "events_by_h": int(case.sum()),
            "mean_pred_all": float(np.nanmean(pr[f"risk_{h}d"].to_numpy(dtype=float))),
            "mean_pred": float(np.mean(risk)),
            "observed_km": km_risk(time_a, ev, h),
            "observed_turnbull": turnbull_risk(left, right, h),
            "auc_model_latent": auc(risk[lat_known], lat_case[lat_known]),
            "auc_oracle_latent": auc(ora[lat_known], lat_case[lat_known]),
            "mean_pred_complete": float(np.mean(risk[known])),
            "observed_complete": float(np.mean(case[known])),
            "mean_oracle": float(np.nanmean(ora)),
            "auc_model": auc(risk[known], case[known]),
            "auc_oracle": auc(ora[known], case[known]),
            "harrell_c_model": harrell_c(time_a, ev, risk),
            "harrell_c_oracle": harrell_c(time_a, ev, ora),
        }
        r = rows[f"{h}d"]
        r["calibration_gap_truth"] = r["mean_pred"] - r["latent_rate_evaluated"]
        r["calibration_gap_truth_all"] = r["mean_pred_all"] - r["latent_rate_all"]
        r["calibrated_within_0.04_truth"] = bool(abs(r["calibration_gap_truth"]) <= 0.04)
        r["calibration_gap_km"] = r["mean_pred"] - r["observed_km"]
        r["calibration_gap_turnbull"] = r["mean_pred"] - r["observed_turnbull"]
        r["calibrated_within_0.04_km"] = bool(abs(r["calibration_gap_km"]) <= 0.04)
        r["calibrated_within_0.04_turnbull"] = bool(abs(r["calibration_gap_turnbull"]) <= 0.04)
    # calibration by days since the last session (28 days), to locate a miscalibration
    dss = pr["days_since_session"].to_numpy(dtype=float)[use]
    edges = (0, 14, 28, 42, 70, 140, 10**4)
    by_dss = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (dss > lo) & (dss <= hi)
        if m.sum() < 10:
            continue
        by_dss.append(
            {
                "days_since_session": f"({lo}, {hi}]",
                "n": int(m.sum()),
                "mean_pred_28d": float(np.mean(pr["risk_28d"].to_numpy(dtype=float)[use][m])),
                "mean_oracle_28d": float(np.mean(orc[28][use][m])),
                "latent_rate_28d": float(np.mean(truth_at["latent"][28][use][m])),
                "observed_turnbull_28d": turnbull_risk(left[m], right[m], 28),
                "observed_km_28d": km_risk(time_a[m], ev[m], 28),
            }
        )
    result = {
        "train_patients": args.train,
        "test_patients": args.test,
        "seed": args.seed,
        "end": args.end,
        "as_of": a_str,
        "model_version": version,
        "kind": args.kind,
        "penalizer": args.penalizer,
        "family": family,
        "rejected_by_lifelines": rejected,
        "status_counts": {str(k): int(v) for k, v in status_counts.items()},
        "observed_rule": (
            "event = first event assessment (project rules, build_episodes) of the episode "
            "current at A dated in (A, A+h]; observed_km = Kaplan-Meier 1-S(h) on the "
            "assessment dates, censored at the last event-free assessment (next session or "
            "end of data); observed_turnbull = Turnbull NPMLE of the latent wane time after A "
            "in (last event-free assessment - A (>= 0), event assessment - A]"
        ),
        "population": args.population,
        "n_followed": int(followed.sum()),
        "horizons": rows,
        "by_days_since_session": by_dss,
        "timings_s": timings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"as-of {a_str}; statuses {result['status_counts']}; model {version} ({family}"
          + (f"; lifelines rejected {', '.join(rejected)})" if rejected else ")"))
    hdr = (
        "horizon",
        "n_usable",
        "events",
        "mean_pred",
        "obs_KM",
        "gap_KM",
        "obs_Turnbull",
        "gap_Turnbull",
        "mean_oracle",
        "AUC_model",
        "AUC_oracle",
        "AUC_model_latent",
        "AUC_oracle_latent",
        "C_model",
        "C_oracle",
    )
    print(" | ".join(hdr))
    for h in HORIZONS:
        r = rows[f"{h}d"]
        print(
            " | ".join(
                [f"{h}d", str(r["n_usable"]), str(r["events_by_h"])]
                + [
                    f"{r[k]:.3f}"
                    for k in (
                        "mean_pred",
                        "observed_km",
                        "calibration_gap_km",
                        "observed_turnbull",
                        "calibration_gap_turnbull",
                        "mean_oracle",
                        "auc_model",
                        "auc_oracle",
                        "auc_model_latent",
                        "auc_oracle_latent",
                        "harrell_c_model",
                        "harrell_c_oracle",
                    )
                ]
            )
        )
    print("against the generator's latent truth (no censoring; oracle = P(T <= t_A+h | T > t_L)):")
    print("(depth oracle = the same with the true response depth in place of z)")
    print("horizon | mean_pred | latent_rate | gap | AUC_model | AUC_oracle | AUC_depth_oracle"
          " | all: mean_pred | latent_rate | gap | AUC_model | AUC_oracle | AUC_depth_oracle")
    for h in HORIZONS:
        r = rows[f"{h}d"]
        print(
            f"{h}d | {r['mean_pred']:.3f} | {r['latent_rate_evaluated']:.3f} | "
            f"{r['calibration_gap_truth']:+.3f} | {r['auc_model_truth']:.3f} | "
            f"{r['auc_oracle_truth']:.3f} | {r['auc_depth_oracle_truth']:.3f} | "
            f"{r['mean_pred_all']:.3f} | "
            f"{r['latent_rate_all']:.3f} | {r['calibration_gap_truth_all']:+.3f} | "
            f"{r['auc_model_truth_all']:.3f} | {r['auc_oracle_truth_all']:.3f} | "
            f"{r['auc_depth_oracle_truth_all']:.3f}"
        )
    print("28-day calibration by days since the last session:")
    print("days_since_session | n | mean_pred | latent_rate | mean_oracle | obs_Turnbull | obs_KM")
    for b in by_dss:
        print(
            f"{b['days_since_session']} | {b['n']} | {b['mean_pred_28d']:.3f} | "
            f"{b['latent_rate_28d']:.3f} | "
            f"{b['mean_oracle_28d']:.3f} | {b['observed_turnbull_28d']:.3f} | "
            f"{b['observed_km_28d']:.3f}"
        )
    print("timings", {k: round(v, 1) for k, v in timings.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
