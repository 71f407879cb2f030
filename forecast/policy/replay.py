"""Replay the maintenance suggestions against fixed schedules on a simulated cohort.

The simulator knows, for every response episode, the latent number of days
``T`` after the episode's start at which the benefit wanes (``truth.csv``).
That lets us ask what *would* have happened under another booking rule:

- A schedule that books the next session ``d`` days after the episode start
  lets the benefit wane before the session exactly when ``T < d``.
- Fixed schedules book at 14, 21, 28 or 42 days (2-, 3-, 4- or 6-weekly).
- The model-driven schedule books with information available at the time:
  at the episode's response assessment (the first PHQ-9 after the session) it
  forecasts and books the suggested session-by date; at every later observed
  assessment before the real next session (and before the booked date) it
  forecasts again and keeps the earliest date suggested so far. When an
  assessment shows that the benefit has waned, or the risk is already above
  the threshold, the session is booked on that day (never sooner than the
  minimum interval after the last session).
- Sessions per patient-year = 365.25 / mean interval over the replayed episodes.

Counterfactual assumptions (stated in the report): the latent wane time does
not depend on when the next session is booked (sessions before ``T`` do not
delay it within the episode); episodes are replayed independently (a changed
booking does not change the patient's later episodes); only observed episodes
whose start matches a simulated truth episode are replayed; the data used to
forecast are the observed assessments dated before the real next session.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.policy import PolicySettings, forecast_frame, suggest_offsets
from forecast.policy.model_access import outcome_definition

#: Fixed schedules replayed against the model (weeks between sessions).
FIXED_WEEKS: tuple[int, ...] = (2, 3, 4, 6)
#: Threshold sweep of the model-driven schedule.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.02, 0.505, 0.02), 3))
DAYS_PER_YEAR = 365.25
TABLE_COLUMNS: tuple[str, ...] = (
    "schedule",
    "threshold",
    "sessions_per_patient_year",
    "waned_before_session_share",
    "n_episodes",
)
ASSUMPTIONS = (
    "The latent wane time of an episode does not depend on when the next session is booked; "
    "episodes are replayed independently; the model-driven schedule uses only observed "
    "assessments dated before the real next session, forecasting at the response assessment "
    "and at every later assessment and keeping the earliest suggested date."
)


class PolicyEvaluationError(ValueError):
    """The policy replay cannot run (no simulator truth, no episode to replay)."""


def replay_episodes(
    cohort: Cohort, model: Any, truth: pd.DataFrame | str | Path | None
) -> pd.DataFrame:
    """Observed episodes matched to their latent wane time.

    ``truth`` is the simulator's truth frame or the path of its ``truth.csv``.

    Returns
    -------
    DataFrame
        One row per replayable episode: ``patient_id``, ``episode_id``,
        ``start``, ``response_date``, ``next_session``, ``latent_wane_days``.
    """
    if isinstance(truth, (str, Path)):
        path = Path(truth)
        if not path.is_file():
            raise PolicyEvaluationError(
                f"{path}: not found; policy replay needs the simulator's truth.csv (written by "
                "`forecast simulate`)"
            )
        from forecast.simulation import read_truth

        truth = read_truth(path)
    if truth is None or not isinstance(truth, pd.DataFrame):
        raise PolicyEvaluationError(
            "policy replay needs the simulator's truth (truth.csv next to the cohort files: "
            "make one with `forecast simulate`); a real clinic's data have no latent wane times"
        )
    needed = {"patient_id", "episode_start", "latent_wane_days"}
    if needed - set(truth.columns):
        raise PolicyEvaluationError(
            f"truth lacks column(s) {sorted(needed - set(truth.columns))}; expected the "
            "truth.csv written by `forecast simulate`"
        )
    from forecast.episodes import build_episodes

    eps = build_episodes(cohort, outcome_definition(model))
    t = truth.loc[:, ["patient_id", "episode_start", "latent_wane_days"]].copy()
    t["patient_id"] = t["patient_id"].astype(str)
    t["episode_start"] = pd.to_datetime(t["episode_start"]).astype("datetime64[ns]")
    t = t.drop_duplicates(["patient_id", "episode_start"])
    m = eps.merge(
        t, left_on=["patient_id", "start"], right_on=["patient_id", "episode_start"], how="inner"
    )
    m = m[m["response_date"].notna() & np.isfinite(m["latent_wane_days"].astype(float))]
    if len(m) == 0:
        raise PolicyEvaluationError(
            "no observed episode matches an episode of truth.csv (patient_id + episode_start); "
            "is truth.csv from the same simulation as the cohort?"
        )
    cols = ["patient_id", "episode_id", "start", "response_date", "next_session"]
    out = m.loc[:, cols].reset_index(drop=True)
    out["latent_wane_days"] = m["latent_wane_days"].to_numpy(dtype=float)
    return out


def _decision_points(
    cohort: Cohort, episodes: pd.DataFrame, settings: PolicySettings
) -> pd.DataFrame:
    """Every (episode, assessment date) at which the policy could re-forecast."""
    a = cohort.assessments[["patient_id", "date"]].drop_duplicates()
    e = episodes[["patient_id", "start", "response_date", "next_session"]].copy()
    e["ep"] = np.arange(len(e))
    pts = e.merge(a, on="patient_id", how="inner")
    horizon_end = pts["start"] + pd.Timedelta(days=settings.max_interval_days)
    ok = (pts["date"] >= pts["response_date"]) & (pts["date"] < horizon_end)
    ok &= pts["next_session"].isna() | (pts["date"] < pts["next_session"])
    pts = pts[ok].sort_values(["ep", "date"], kind="stable").reset_index(drop=True)
    return pts[["ep", "patient_id", "start", "date"]]


def model_bookings(
    cohort: Cohort,
    model: Any,
    episodes: pd.DataFrame,
    thresholds: tuple[float, ...] | np.ndarray,
    settings: PolicySettings | None = None,
) -> np.ndarray:
    """Days after each episode's start at which the model-driven schedule books.

    Returns
    -------
    ndarray of shape (n_thresholds, n_episodes)
    """
    settings = settings or PolicySettings()
    pts = _decision_points(cohort, episodes, settings)
    q = pd.DataFrame(
        {
            "qi": np.arange(len(pts)),
            "patient_id": pts["patient_id"].astype(str).to_numpy(),
            "as_of": pts["date"].to_numpy(),
            "threshold": settings.threshold,
        }
    )
    frame = forecast_frame(cohort, model, q, settings)
    base = frame.pre_safety
    ctx = frame.ctx
    since = ctx["days_since_session"].to_numpy(dtype=float)
    # The last session at a decision point is the episode's start by
    # construction (points lie before the next session); keep the check cheap.
    at_day = (pts["date"] - pts["start"]).dt.days.to_numpy()
    forecastable = np.isin(base, ("routine", "session_due")) | (
        (base == "insufficient_data") & np.isfinite(frame.daily).all(axis=1)
    )
    waned = base == "not_in_response"
    daily = np.nan_to_num(frame.daily, nan=1.0)
    ep = pts["ep"].to_numpy()
    n_ep = len(episodes)
    out = np.empty((len(thresholds), n_ep))
    for k, thr in enumerate(thresholds):
        offs = suggest_offsets(daily, float(thr), since, settings)["session_by"]
        book = np.where(forecastable, at_day + offs, np.inf)
        book = np.where(waned, np.maximum(at_day, settings.min_interval_days), book)
        out[k] = _sequential_booking(ep, at_day, book, n_ep, settings)
    return out


def _sequential_booking(
    ep: np.ndarray, at_day: np.ndarray, book: np.ndarray, n_ep: int, settings: PolicySettings
) -> np.ndarray:
    """Earliest booking so far, using only decision points before the booked date.

    Points are sorted by (episode, day). The running minimum B_k of the
    bookings is non-increasing and the points' days increase, so the points
    still "before the booked session" (day < B_{k-1}) form a prefix of each
    episode: the final booking is the minimum over that prefix.
    """
    s = pd.Series(book)
    run = s.groupby(ep).cummin().to_numpy()
    prev = pd.Series(run).groupby(ep).shift(1).to_numpy()
    usable = np.isnan(prev) | (at_day < prev)
    final = np.full(n_ep, float(settings.max_interval_days))
    if len(ep):
        mins = pd.Series(np.where(usable, book, np.inf)).groupby(ep).min()
        final[mins.index.to_numpy()] = np.minimum(mins.to_numpy(), settings.max_interval_days)
    return final


def evaluate_policy(
    cohort: Cohort,
    model: Any,
    truth: pd.DataFrame | str | Path | None,
    out_dir: str | Path | None,
    *,
    settings: PolicySettings | None = None,
    thresholds: tuple[float, ...] | np.ndarray = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """Replay model-driven and fixed maintenance schedules against the latent truth.

    Parameters
    ----------
    cohort : Cohort
        A simulated cohort (ideally not the one the model was trained on).
    model : LoadedModel
        The registry version whose suggestions are replayed.
    truth : DataFrame, path or None
        The simulator's truth (patient_id, episode_start, latent_wane_days,
        ...) or the path of its ``truth.csv``. None or a missing file raises
        :class:`PolicyEvaluationError`.
    out_dir : str or Path or None
        Where ``policy_eval.csv`` and ``policy_eval.png`` are written (None:
        nothing written).
    settings : PolicySettings, optional
        Minimum/maximum interval and window rules (the threshold is swept).
    thresholds : sequence of float
        The threshold sweep of the model-driven schedule.

    Returns
    -------
    dict
        ``table`` (list of row dicts with :data:`TABLE_COLUMNS`), ``html`` (a
        fragment with the table and an inline PNG plot), ``comparison`` (per
        fixed schedule: the model's waned share interpolated at the same
        sessions per patient-year, and whether the model is better) and
        ``assumptions``.
    """
    settings = settings or PolicySettings()
    thresholds = np.asarray(thresholds, dtype=float)
    episodes = replay_episodes(cohort, model, truth)
    T = episodes["latent_wane_days"].to_numpy(dtype=float)
    n = len(episodes)
    rows: list[dict[str, Any]] = []
    for w in FIXED_WEEKS:
        d = 7 * w
        rows.append(
            {
                "schedule": f"fixed every {w} weeks",
                "threshold": None,
                "sessions_per_patient_year": round(DAYS_PER_YEAR / d, 3),
                "waned_before_session_share": round(float(np.mean(T < d)), 4),
                "n_episodes": n,
            }
        )
    bookings = model_bookings(cohort, model, episodes, thresholds, settings)
    for thr, b in zip(thresholds, bookings, strict=True):
        rows.append(
            {
                "schedule": "model",
                "threshold": round(float(thr), 3),
                "sessions_per_patient_year": round(DAYS_PER_YEAR / float(np.mean(b)), 3),
                "waned_before_session_share": round(float(np.mean(T < b)), 4),
                "n_episodes": n,
            }
        )
    comparison = compare_to_fixed(rows)
    png = _plot(rows)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).to_csv(out / "policy_eval.csv", index=False)
        (out / "policy_eval.png").write_bytes(png)
    return {
        "table": rows,
        "html": _html(rows, comparison, png),
        "comparison": comparison,
        "assumptions": ASSUMPTIONS,
    }


def model_share_at(rows: list[dict[str, Any]], sessions_per_year: float) -> float | None:
    """The model curve's waned share at a given sessions/year (linear interpolation).

    None when the sessions/year lies outside the range the sweep reached.
    """
    model = sorted(
        (r["sessions_per_patient_year"], r["waned_before_session_share"])
        for r in rows
        if r["schedule"] == "model"
    )
    if not model:
        return None
    x = np.array([m[0] for m in model])
    y = np.array([m[1] for m in model])
    if sessions_per_year < x.min() or sessions_per_year > x.max():
        return None
    # Several thresholds can give the same sessions/year; keep the best share there.
    ux = np.unique(x)
    uy = np.array([y[x == v].min() for v in ux])
    return float(np.interp(sessions_per_year, ux, uy))


def compare_to_fixed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each fixed schedule: does the model do better at the same or fewer sessions?

    ``model_share_same_sessions`` interpolates the model curve at the fixed
    schedule's sessions/year; ``best_model_share_no_more_sessions`` is the
    lowest waned share among model thresholds needing no more sessions. The
    model beats the schedule when the latter (or, failing that, the former)
    is strictly lower than the fixed schedule's share.
    """
    out = []
    model = [r for r in rows if r["schedule"] == "model"]
    for r in rows:
        if r["schedule"] == "model":
            continue
        spy = r["sessions_per_patient_year"]
        interp = model_share_at(rows, spy)
        fewer = [
            m["waned_before_session_share"] for m in model if m["sessions_per_patient_year"] <= spy
        ]
        best = min(fewer) if fewer else None
        candidates = [v for v in (best, interp) if v is not None]
        out.append(
            {
                "schedule": r["schedule"],
                "sessions_per_patient_year": spy,
                "fixed_share": r["waned_before_session_share"],
                "model_share_same_sessions": None if interp is None else round(interp, 4),
                "best_model_share_no_more_sessions": best,
                "model_better": bool(candidates)
                and min(candidates) < r["waned_before_session_share"],
            }
        )
    return out


def _plot(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    ax = fig.subplots()
    model = sorted(
        (r for r in rows if r["schedule"] == "model"),
        key=lambda r: r["sessions_per_patient_year"],
    )
    ax.plot(
        [r["sessions_per_patient_year"] for r in model],
        [100 * r["waned_before_session_share"] for r in model],
        "o-",
        ms=3,
        label="model-driven (threshold swept)",
    )
    for r in model:
        if r["threshold"] in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
            ax.annotate(
                f"{r['threshold']:.2f}",
                (r["sessions_per_patient_year"], 100 * r["waned_before_session_share"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    fixed = [r for r in rows if r["schedule"] != "model"]
    ax.plot(
        [r["sessions_per_patient_year"] for r in fixed],
        [100 * r["waned_before_session_share"] for r in fixed],
        "s",
        color="black",
        label="fixed schedules",
    )
    for r in fixed:
        ax.annotate(
            r["schedule"].replace("fixed every ", ""),
            (r["sessions_per_patient_year"], 100 * r["waned_before_session_share"]),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=8,
        )
    ax.set_xlabel("sessions per patient-year")
    ax.set_ylabel("episodes whose benefit waned before the next session (%)")
    ax.set_title("Maintenance schedules replayed against the simulated truth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _html(rows: list[dict[str, Any]], comparison: list[dict[str, Any]], png: bytes) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in TABLE_COLUMNS) + "</tr>" for r in rows
    )
    cmp_rows = "".join(
        "<tr>"
        f"<td>{cell(c['schedule'])}</td><td>{cell(c['sessions_per_patient_year'])}</td>"
        f"<td>{cell(c['fixed_share'])}</td><td>{cell(c['model_share_same_sessions'])}</td>"
        f"<td>{cell(c['best_model_share_no_more_sessions'])}</td>"
        f"<td>{'yes' if c['model_better'] else 'no'}</td></tr>"
        for c in comparison
    )
    img = base64.b64encode(png).decode("ascii")
    return (
        '<section class="policy-evaluation">'
        "<h2>Maintenance policy replay</h2>"
        "<p>Each observed response episode of the simulated cohort is replayed with its "
        "latent wane time: a schedule booking the next session <em>d</em> days after the "
        "episode start lets the benefit wane before the session when the latent time is "
        "below <em>d</em>. Sessions per patient-year = 365.25 / mean interval.</p>"
        f"<p>Assumptions: {html.escape(ASSUMPTIONS)}</p>"
        f'<img alt="sessions per patient-year against the share of episodes whose benefit '
        f'waned before the next session" src="data:image/png;base64,{img}">'
        "<h3>Model against each fixed schedule</h3>"
        "<table><tr><th>schedule</th><th>sessions_per_patient_year</th><th>fixed share</th>"
        "<th>model share at the same sessions/year</th>"
        "<th>best model share with no more sessions</th><th>model better</th></tr>"
        f"{cmp_rows}</table>"
        f"<h3>All schedules</h3><table><tr>{head}</tr>{body}</table>"
        "<p>Decision support research output on simulated data; not a suicide-risk "
        "assessment.</p>"
        "</section>"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m forecast.policy_eval DIR --model REF [--models M] --out OUT``.

    The same replay as ``forecast evaluate DIR --model REF --out OUT --policy``,
    for running it on its own: writes ``policy_eval.csv``, ``policy_eval.png``
    and ``policy_eval.html`` into OUT and prints the table.
    """
    import argparse

    from forecast import registry
    from forecast.data import load_cohort

    parser = argparse.ArgumentParser(
        prog="python -m forecast.policy_eval",
        description="Replay model-driven and fixed maintenance schedules on a simulated cohort.",
    )
    parser.add_argument("data_dir", type=Path, help="simulated cohort folder with truth.csv")
    parser.add_argument("--model", default="latest", help='version id, "latest" or a path')
    parser.add_argument("--models", type=Path, default=None, help="registry folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    model = registry.load(args.model, registry.models_dir(args.models))
    cohort = load_cohort(args.data_dir)
    res = evaluate_policy(cohort, model, args.data_dir / "truth.csv", args.out)
    (args.out / "policy_eval.html").write_text(res["html"])
    print(pd.DataFrame(res["table"], columns=list(TABLE_COLUMNS)).to_string(index=False))
    print()
    print(pd.DataFrame(res["comparison"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
