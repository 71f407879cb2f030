"""Episodes: hand-checked interval bounds, censoring, SI events, confirmation, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.episodes import EPISODE_COLUMNS, build_episodes, session_responses
from forecast.outcomes import OutcomeDefinition
from tests.fixtures.episodes import cohorts, day, make_cohort


def one(cohort, **kw) -> pd.Series:
    eps = build_episodes(cohort, **kw)
    assert len(eps) == 1, eps
    return eps.iloc[0]


def test_columns_follow_the_architecture_contract():
    c = make_cohort([("p", 0, "induction")], [("p", -1, 20), ("p", 7, 8)])
    eps = build_episodes(c)
    assert tuple(eps.columns) == EPISODE_COLUMNS
    assert eps.loc[0, "episode_id"] == "p#1"
    assert eps.loc[0, "episode_index"] == 1
    assert eps.loc[0, "start"] == day(0)


def test_event_interval_lies_between_the_two_assessments():
    # Baseline 20 -> response needs <= 10; waning needs > 10 and >= 10.
    c = make_cohort(
        [("p", 0, "induction")],
        [("p", -1, 20), ("p", 7, 8), ("p", 14, 10), ("p", 21, 9), ("p", 30, 13), ("p", 37, 15)],
    )
    e = one(c)
    assert e["event"]
    assert (e["lower"], e["upper"]) == (21.0, 30.0)
    assert e["event_date"] == day(30)
    assert e["last_event_free_date"] == day(21)
    assert e["event_reason"] == "symptoms"
    assert e["censor_reason"] is None
    assert e["baseline_phq9"] == 20
    assert e["response_phq9"] == 8
    assert e["response_day"] == 7


def test_episode_censored_at_a_booster_and_next_episode_starts():
    c = make_cohort(
        [("p", 0, "induction"), ("p", 28, "maintenance")],
        [("p", -1, 20), ("p", 7, 8), ("p", 14, 9), ("p", 35, 7), ("p", 49, 14)],
    )
    eps = build_episodes(c)
    first, second = eps.iloc[0], eps.iloc[1]
    assert (first["lower"], first["upper"], first["event"]) == (14.0, math.inf, False)
    assert first["censor_reason"] == "next_session"
    assert first["next_session"] == day(28)
    # The day-35 and day-49 scores belong to the booster's episode.
    assert second["episode_id"] == "p#2"
    assert (second["lower"], second["upper"], second["event"]) == (7.0, 21.0, True)
    assert pd.isna(second["next_session"])


def test_assessment_on_the_booster_day_belongs_to_the_previous_episode():
    c = make_cohort(
        [("p", 0, "induction"), ("p", 28, "maintenance")],
        [("p", -1, 20), ("p", 7, 8), ("p", 28, 14), ("p", 35, 6)],
    )
    eps = build_episodes(c)
    assert (eps.loc[0, "lower"], eps.loc[0, "upper"], eps.loc[0, "event"]) == (7.0, 28.0, True)
    assert eps.loc[1, "response_date"] == day(35)


def test_right_censoring_at_end_of_follow_up():
    c = make_cohort(
        [("p", 0, "induction")], [("p", -3, 16), ("p", 4, 6), ("p", 11, 7), ("p", 25, 8)]
    )
    e = one(c)
    assert (e["lower"], e["upper"], e["event"]) == (25.0, math.inf, False)
    assert e["censor_reason"] == "end_of_follow_up"


def test_non_responders_and_late_scores_start_no_episode():
    c = make_cohort(
        [
            ("a", 0, "induction"),  # 11 > 10: not a response
            ("b", 0, "induction"),  # first PHQ-9 on day 15: outside the 14-day window
            ("c", 0, "induction"),  # first PHQ-9 after the next session
            ("c", 3, "induction"),
            ("d", 0, "maintenance"),  # no induction, hence no baseline
        ],
        [
            ("a", -1, 22),
            ("a", 7, 12),
            ("b", -1, 20),
            ("b", 15, 5),
            ("c", -1, 20),
            ("c", 5, 6),
            ("d", -1, 20),
            ("d", 7, 5),
        ],
    )
    eps = build_episodes(c)
    assert list(eps["episode_id"]) == ["c#1"]
    assert eps.loc[0, "start"] == day(3)
    rows = session_responses(c).set_index(["patient_id", "start"])
    assert rows.loc[("a", day(0)), "response_status"] == "not_responded"
    assert rows.loc[("b", day(0)), "response_status"] == "no_assessment"
    assert rows.loc[("c", day(0)), "response_status"] == "no_assessment"
    assert rows.loc[("c", day(3)), "response_status"] == "responded"
    assert rows.loc[("d", day(0)), "response_status"] == "no_baseline"
    assert not rows["responded"].drop(("c", day(3))).any()
    assert rows["lower"].drop(("c", day(3))).isna().all()


def test_item9_reemergence_is_the_event_only_after_a_zero_at_the_start():
    sessions = [("z", 0, "induction"), ("o", 0, "induction")]
    assessments = [
        ("z", -1, 20, 2),
        ("z", 7, 6, 0),
        ("z", 14, 6, 1),  # still in response, but SI re-emerges
        ("o", -1, 20, 2),
        ("o", 7, 6, 1),  # item 9 not 0 at the start: the item-9 rule does not apply
        ("o", 14, 6, 1),
        ("o", 21, 6, 1, 2),  # C-SSRS ideation 2 applies whatever the start
    ]
    eps = build_episodes(make_cohort(sessions, assessments)).set_index("patient_id")
    assert (eps.loc["z", "lower"], eps.loc["z", "upper"]) == (7.0, 14.0)
    assert eps.loc["z", "event_reason"] == "item9"
    assert (eps.loc["o", "lower"], eps.loc["o", "upper"]) == (14.0, 21.0)
    assert eps.loc["o", "event_reason"] == "cssrs_ideation"


def test_cssrs_only_row_can_be_an_event_but_never_moves_lower():
    c = make_cohort(
        [("p", 0, "induction")],
        [("p", -1, 20, 0), ("p", 7, 6, 0), ("p", 10, None, None, 0), ("p", 12, None, None, 3)],
    )
    e = one(c)
    assert (e["lower"], e["upper"]) == (7.0, 12.0)
    assert e["event_reason"] == "cssrs_ideation"


def test_confirmation_option():
    confirm = OutcomeDefinition(confirm_waning=True)
    # A single bad score followed by a good one is not an event when confirming.
    blip = make_cohort(
        [("p", 0, "induction")],
        [("p", -1, 20), ("p", 7, 8), ("p", 14, 13), ("p", 21, 8), ("p", 28, 9)],
    )
    assert one(blip)["upper"] == 14.0
    e = one(blip, definition=confirm)
    assert (e["lower"], e["upper"], e["event"]) == (28.0, math.inf, False)
    # Two bad scores in a row: the event is the first, known at the second.
    two = make_cohort(
        [("p", 0, "induction")],
        [("p", -1, 20), ("p", 7, 8), ("p", 14, 9), ("p", 21, 13), ("p", 28, 14)],
    )
    e = one(two, definition=confirm)
    assert (e["lower"], e["upper"], e["event"]) == (14.0, 21.0, True)
    assert e["event_date"] == day(21)
    assert e["event_known_date"] == day(28)
    # An unconfirmed bad score at the end leaves the episode censored before it.
    pending = make_cohort(
        [("p", 0, "induction")], [("p", -1, 20), ("p", 7, 8), ("p", 14, 9), ("p", 21, 13)]
    )
    e = one(pending, definition=confirm)
    assert (e["lower"], e["upper"], e["event"]) == (14.0, math.inf, False)
    # SI never waits for confirmation.
    si = make_cohort([("p", 0, "induction")], [("p", -1, 20, 0), ("p", 7, 8, 0), ("p", 14, 8, 1)])
    e = one(si, definition=confirm)
    assert (e["lower"], e["upper"], e["event_known_date"]) == (7.0, 14.0, day(14))


def test_same_day_event_after_the_response_gives_lower_zero():
    c = make_cohort([("p", 0, "induction")], [("p", -1, 20), ("p", 7, 8), ("p", 7, None, None, 4)])
    e = one(c)
    assert (e["lower"], e["upper"]) == (0.0, 7.0)


def test_no_sessions_or_no_assessments_give_an_empty_table():
    c = make_cohort([("p", 0, "induction")], [])
    eps = build_episodes(c)
    assert eps.empty
    assert tuple(eps.columns) == EPISODE_COLUMNS


# --- properties ----------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts(), st.booleans())
def test_interval_properties(cohort, confirm):
    eps = build_episodes(cohort, OutcomeDefinition(confirm_waning=confirm))
    if eps.empty:
        return
    assert (eps["lower"] >= 0).all()
    assert (eps["lower"] < eps["upper"]).all()
    assert (eps["event"] == np.isfinite(eps["upper"])).all()
    assert eps["censor_reason"].isna().eq(eps["event"]).all()
    events = eps[eps["event"]]
    assert (events["event_date"] > events["start"]).all()
    assert (events["event_known_date"] >= events["event_date"]).all()
    # Episodes end at the next session: the event is never after it.
    nxt = events["next_session"].notna()
    assert (events.loc[nxt, "event_date"] <= events.loc[nxt, "next_session"]).all()
    # Response is exactly "<= half the baseline".
    assert (eps["response_phq9"] <= 0.5 * eps["baseline_phq9"]).all()
    assert eps["episode_id"].is_unique


# --- scale and CLI -------------------------------------------------------------


@pytest.mark.slow
def test_simulated_cohort_episodes_are_consistent(sim_small):
    eps = build_episodes(sim_small.cohort)
    assert len(eps) > 0
    assert (eps["lower"] < eps["upper"]).all()
    assert set(eps["censor_reason"].dropna()) <= {"next_session", "end_of_follow_up"}


def test_cli_exports_the_episode_table(tmp_path):
    from forecast.cli import main
    from forecast.data import write_cohort

    c = make_cohort(
        [("p", 0, "induction"), ("p", 28, "maintenance")],
        [("p", -1, 20), ("p", 7, 8), ("p", 14, 9), ("p", 35, 7), ("p", 49, 14)],
    )
    write_cohort(c, tmp_path / "cohort")
    runner = CliRunner()
    out = tmp_path / "eps.csv"
    result = runner.invoke(main, ["episodes", str(tmp_path / "cohort"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out)
    want = build_episodes(c)
    assert list(got["episode_id"]) == list(want["episode_id"])
    assert list(got["lower"]) == list(want["lower"])
    assert list(got["upper"]) == list(want["upper"])
    pq = tmp_path / "eps.parquet"
    result = runner.invoke(
        main, ["episodes", str(tmp_path / "cohort"), "--out", str(pq), "--all-sessions"]
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(pq)) == 2
    bad = runner.invoke(main, ["episodes", str(tmp_path / "cohort"), "--out", "x.txt"])
    assert bad.exit_code != 0
    assert ".csv or .parquet" in bad.output


def test_cli_reports_contract_errors_with_exit_status_1(tmp_path):
    from forecast.cli import main
    from forecast.data import write_cohort

    c = make_cohort([("p", 0, "induction")], [("p", -1, 20), ("p", 7, 8)])
    write_cohort(c, tmp_path)
    text = (tmp_path / "assessments.csv").read_text()
    (tmp_path / "assessments.csv").write_text(text.replace(",20,", ",40,", 1))
    result = CliRunner().invoke(main, ["episodes", str(tmp_path), "--out", str(tmp_path / "e.csv")])
    assert result.exit_code == 1
    assert "assessments" in result.output
    assert not (tmp_path / "e.csv").exists()


def reference_episodes(cohort, d: OutcomeDefinition) -> dict[tuple[str, pd.Timestamp], tuple]:
    """The episode rules written as plain loops, one patient and one session at a time."""
    from forecast.instruments import score_assessments

    scored = score_assessments(cohort.assessments)
    out = {}
    for pid, sess in cohort.sessions.groupby("patient_id"):
        rows = scored[scored["patient_id"] == pid].to_dict("records")
        dates = list(sess["date"])
        kinds = list(sess["kind"])
        inductions = [x for x, k in zip(dates, kinds, strict=True) if k == "induction"]
        if not inductions:
            continue
        anchor = inductions[0]
        window = pd.Timedelta(days=d.baseline_window_days)
        pre = [r for r in rows if anchor - window <= r["date"] <= anchor and r["phq9"] == r["phq9"]]
        if not pre and d.baseline_after_days is not None:
            # Fallback: the first PHQ-9 shortly after the first induction session.
            after = anchor + pd.Timedelta(days=d.baseline_after_days)
            pre = [r for r in rows if anchor < r["date"] <= after and r["phq9"] == r["phq9"]][:1]
            pre = [r for r in pre if r["phq9"] >= d.waned_phq9_min]
        if not pre:
            continue
        base = pre[-1]["phq9"]
        for k, start in enumerate(dates):
            if start < anchor:
                continue
            nxt = dates[k + 1] if k + 1 < len(dates) else pd.Timestamp.max
            window = d.response_window_days
            if start > anchor and d.booster_response_window_days is not None:
                window = max(window, d.booster_response_window_days)  # after the first induction
            limit = min(start + pd.Timedelta(days=window), nxt)
            own = [i for i, r in enumerate(rows) if start < r["date"] <= nxt]
            firsts = [
                i for i in own if rows[i]["date"] <= limit and rows[i]["phq9"] == rows[i]["phq9"]
            ]
            # A session given in response: the latest PHQ-9 on or before its day.
            earlier = [
                i
                for i, r in enumerate(rows)
                if d.pre_session_window_days is not None
                and start - pd.Timedelta(days=d.pre_session_window_days) <= r["date"] <= start
                and r["phq9"] == r["phq9"]
            ]
            pre_ok = (
                start > anchor
                and earlier
                and rows[earlier[-1]]["phq9"] <= d.response_fraction * base
                and not rows[earlier[-1]]["cssrs_ideation"] >= d.si_cssrs_min
            )
            if pre_ok:
                firsts = [earlier[-1]]
            elif not firsts or not rows[firsts[0]]["phq9"] <= d.response_fraction * base:
                continue
            r_i = firsts[0]
            start_item9 = rows[r_i]["item9"]
            seq = [(r_i, False, False)]  # (row, criterion met, SI criterion met)
            for i in own:
                if i <= r_i:
                    continue
                r = rows[i]
                sym = r["phq9"] > d.response_fraction * base and r["phq9"] >= d.waned_phq9_min
                si = (r["item9"] >= d.si_item9_min and start_item9 == 0) or (
                    r["cssrs_ideation"] >= d.si_cssrs_min
                )
                if r["phq9"] == r["phq9"] or si:
                    seq.append((i, sym or si, si))
            event_at = None
            for j, (_i, crit, si) in enumerate(seq):
                if not crit:
                    continue
                if not d.confirm_waning or si or (j + 1 < len(seq) and seq[j + 1][1]):
                    event_at = j
                    break
            # A pre-session response row counts as the episode's start (day 0).
            day = {i: max(0, (rows[i]["date"] - start).days) for i, _, _ in seq}
            if event_at is not None:
                e_day = day[seq[event_at][0]]
                before = [day[i] for i, _, _ in seq if day[i] < e_day]
                out[(pid, start)] = (max(before, default=0), float(e_day), True)
            else:
                keep = seq
                if d.confirm_waning and seq[-1][1]:
                    keep = seq[:-1]  # unconfirmed at the end: censor before it
                out[(pid, start)] = (float(day[keep[-1][0]]), math.inf, False)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts(), st.booleans())
def test_vectorised_episodes_match_the_reference_loops(cohort, confirm):
    d = OutcomeDefinition(confirm_waning=confirm)
    eps = build_episodes(cohort, d)
    got = {(r.patient_id, r.start): (r.lower, r.upper, bool(r.event)) for r in eps.itertuples()}
    assert got == reference_episodes(cohort, d)


# --- responses read before a booster, and the baseline fallback -----------------------------
def _ep(cohort, definition=None):
    return build_episodes(cohort, definition or OutcomeDefinition(), include_non_responding=True)


def test_a_booster_given_in_response_starts_an_episode_on_the_check_in_score():
    # Induction 0, 3; response at 10 (PHQ-9 6 of 20); booster at 30 with its PHQ-9 taken
    # at check-in the same day (7: in response), the next score only at the next visit.
    sessions = [("p", 0, "induction"), ("p", 3, "induction"), ("p", 30, "maintenance"),
                ("p", 51, "maintenance")]
    scores = [("p", 0, 20), ("p", 10, 6), ("p", 30, 7), ("p", 51, 14)]
    e = _ep(make_cohort(sessions, scores)).set_index("start")
    booster = e.loc[day(30)]
    assert booster["responded"]
    assert booster["response_date"] == day(30)  # the pre-session score
    assert booster["response_day"] == 0
    assert booster["response_phq9"] == 7
    # PHQ-9 14 at the next visit (day 51, > 10 and > 50 % of 20): waned in (0, 21].
    assert (booster["lower"], booster["upper"], booster["event"]) == (0, 21, True)
    # The visit on day 51 has no score after it: an episode censored at its start.
    last = e.loc[day(51)]
    assert not last["responded"]  # 14 is not a response (pre-session score out of response)
    # Without the rule, the next visit's check-in (21 days on, within the booster's
    # 42-day window) is the booster's response assessment: not a response.
    off = _ep(make_cohort(sessions, scores), OutcomeDefinition(pre_session_window_days=None))
    assert off.set_index("start").loc[day(30), "response_status"] == "not_responded"
    # With neither rule the booster's response is not measured.
    off = _ep(make_cohort(sessions, scores), OutcomeDefinition(
        pre_session_window_days=None, booster_response_window_days=None))
    assert off.set_index("start").loc[day(30), "response_status"] == "no_assessment"


def test_pre_session_rule_limits():
    base = [("p", 0, "induction"), ("p", 3, "induction")]
    scores = [("p", 0, 20), ("p", 10, 6)]
    # Too old: the latest score is 15 days before the booster (window 14).
    e = _ep(make_cohort([*base, ("p", 25, "maintenance")], scores))
    assert not e.set_index("start").loc[day(25), "responded"]
    # 14 days old: the PHQ-9's own two-week recall still covers the session day.
    e = _ep(make_cohort([*base, ("p", 24, "maintenance")], scores))
    assert e.set_index("start").loc[day(24), "response_day"] == -14
    # The first induction session's check-in score is the baseline, never a response;
    # a later induction session given in response responds on it.
    e = _ep(make_cohort([("p", 0, "induction"), ("p", 12, "induction")], scores))
    e = e.set_index("start")
    assert e.loc[day(0), "response_date"] == day(10)  # measured after the first session
    assert e.loc[day(12), "response_date"] == day(10)  # in response at the second's check-in
    assert e.loc[day(12), "response_day"] == -2
    only = _ep(make_cohort([("p", 0, "induction")], [("p", 0, 20)]))
    assert not only["responded"].any()  # the first session's check-in is the baseline
    # A pre-session score with C-SSRS ideation >= 2 is no evidence of benefit.
    e = _ep(make_cohort([*base, ("p", 12, "maintenance")], [*scores, ("p", 12, 6, 0, 2)]))
    assert not e.set_index("start").loc[day(12), "responded"]
    # Within the window and in response: responds, censored at its start (nothing after).
    e = _ep(make_cohort([*base, ("p", 14, "maintenance")], scores)).set_index("start")
    row = e.loc[day(14)]
    assert row["responded"]
    assert row["response_day"] == -4
    assert (row["lower"], row["upper"], row["event"]) == (0, math.inf, False)
    assert row["censor_reason"] == "end_of_follow_up"


def test_a_booster_responds_on_its_first_score_within_its_own_window():
    """After the first induction session a session's first PHQ-9 may come up to 42 days
    later (clinics that score at visits); the first induction session keeps 14 days."""
    base = [("p", 0, "induction"), ("p", 3, "induction")]
    scores = [("p", 0, 20), ("p", 10, 6), ("p", 40, 12)]  # 12 > 10: not in response at 40
    late = [("p", 70, 5)]  # the booster at 40 is scored 30 days later, in response
    e = _ep(make_cohort([*base, ("p", 40, "maintenance")], [*scores, *late]))
    row = e.set_index("start").loc[day(40)]
    assert row["responded"]
    assert (row["response_date"], row["response_day"]) == (day(70), 30)
    # 43 days later: outside the window, not measured.
    e = _ep(make_cohort([*base, ("p", 40, "maintenance")], [*scores, ("p", 83, 5)]))
    assert e.set_index("start").loc[day(40), "response_status"] == "no_assessment"
    # A later score that is out of response: the booster did not respond.
    e = _ep(make_cohort([*base, ("p", 40, "maintenance")], [*scores, ("p", 70, 15)]))
    assert e.set_index("start").loc[day(40), "response_status"] == "not_responded"
    # Never past the next session: a score after it belongs to that session.
    e = _ep(make_cohort([*base, ("p", 40, "maintenance"), ("p", 60, "maintenance")],
                        [*scores, *late])).set_index("start")
    assert e.loc[day(40), "response_status"] == "no_assessment"
    assert e.loc[day(60), "response_date"] == day(70)
    # The first induction session: 14 days, as before.
    e = _ep(make_cohort([("p", 0, "induction")], [("p", 0, 20), ("p", 20, 6)]))
    assert e.set_index("start").loc[day(0), "response_status"] == "no_assessment"
    # None: every session on response_window_days.
    e = _ep(make_cohort([*base, ("p", 40, "maintenance")], [*scores, *late]),
            OutcomeDefinition(booster_response_window_days=None))
    assert e.set_index("start").loc[day(40), "response_status"] == "no_assessment"


def test_baseline_fallback_after_the_first_session():
    sessions = [("p", 0, "induction"), ("p", 3, "induction")]
    later = make_cohort(sessions, [("p", 2, 18), ("p", 12, 8)])
    e = _ep(later).set_index("start")
    assert e.loc[day(3), "baseline_phq9"] == 18  # the score 2 days after the first session
    assert e.loc[day(3), "responded"]  # 8 <= 9
    too_late = make_cohort([("p", 0, "induction"), ("p", 3, "induction")],
                           [("p", 8, 18), ("p", 12, 8)])
    assert _ep(too_late)["response_status"].eq("no_baseline").all()
    off = _ep(later, OutcomeDefinition(baseline_after_days=None))
    assert off["response_status"].eq("no_baseline").all()
    # A score below 10 after the first infusion is no reference for response.
    low = make_cohort(sessions, [("p", 2, 8), ("p", 12, 3)])
    assert _ep(low)["response_status"].eq("no_baseline").all()


def test_definitions_saved_before_the_new_rules_keep_them_off():
    saved = OutcomeDefinition().to_dict()
    for key in ("pre_session_window_days", "baseline_after_days",
                "booster_response_window_days"):
        saved.pop(key)
    old = OutcomeDefinition.from_dict(saved)
    assert old.pre_session_window_days is None
    assert old.baseline_after_days is None
    assert old.booster_response_window_days is None
    assert OutcomeDefinition.from_dict(OutcomeDefinition().to_dict()) == OutcomeDefinition()
