"""``forecast simulate``: a synthetic cohort and its latent truth (registered by forecast.cli)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import pandas as pd

from forecast.simulation.generator import SCHEDULES

COMMANDS: list[click.Command] = []


@click.command("simulate")
@click.option(
    "--patients",
    "n_patients",
    type=click.IntRange(min=1),
    required=True,
    help="Number of simulated patients (each starts an induction).",
)
@click.option(
    "--seed",
    type=int,
    required=True,
    help="Random seed; the same seed and options give identical files.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder for patients.csv, sessions.csv, assessments.csv and truth.csv.",
)
@click.option(
    "--end-date",
    default="2026-10-31",
    show_default=True,
    help="End of follow-up (YYYY-MM-DD); nothing is dated after it.",
)
@click.option(
    "--schedule",
    type=click.Choice(list(SCHEDULES)),
    default="weekly",
    show_default=True,
    help="When the clinic records a PHQ-9: every 7-14 days between sessions, at check-in "
    "(the day of or before each session) plus sparse scores between visits, or every "
    "4-8 weeks, or every 3 days (research). The latent course and truth.csv do not depend on it.",
)
@click.option(
    "--totals-only-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of patients whose clinic records only PHQ-9 totals (no item answers, "
    "C-SSRS, dose, route, psychotherapy, dissociation or blood pressure).",
)
@click.option(
    "--patients-per-part",
    type=click.IntRange(min=1),
    default=None,
    help="Write a partitioned dataset instead (Parquet parts of this many patients per "
    "table, plus truth/ parts), simulated and written one part at a time so memory stays "
    "that of one part; see docs/dask.md.",
)
def simulate_command(n_patients: int, seed: int, out_dir: Path, end_date: str,
                     schedule: str, totals_only_share: float,
                     patients_per_part: int | None) -> None:
    """Simulate a clinic cohort with a known truth (synthetic data, no real patients).

    Writes the three contract files plus truth.csv: one row per response
    episode with the latent days until the benefit wanes and the true risk at
    7/14/28/56/84 days.
    """
    # Imported here so that `forecast --help` stays fast.
    from forecast.simulation import simulate, summarize, write_simulation

    try:
        end = pd.Timestamp(end_date)
    except ValueError as exc:
        raise click.BadParameter(
            f"got {end_date!r}; expected a date YYYY-MM-DD", param_hint="--end-date"
        ) from exc
    if end > pd.Timestamp.today().normalize():
        click.echo(
            f"warning: end date {end.date()} is in the future; "
            "`forecast validate` rejects dates after today",
            err=True,
        )
    if patients_per_part is not None:
        _simulate_parts(n_patients, seed, out_dir, patients_per_part, end=end,
                        schedule=schedule, totals_only_share=totals_only_share)
        return
    t0 = time.perf_counter()
    click.echo(f"simulating {n_patients} patients (seed {seed}, end {end.date()}, "
               f"schedule {schedule}, totals-only share {totals_only_share:g})...", err=True)
    result = simulate(n_patients, seed, end_date=end, schedule=schedule,
                      totals_only_share=totals_only_share)
    click.echo(f"simulated in {time.perf_counter() - t0:.1f} s; writing {out_dir}...", err=True)
    write_simulation(result, out_dir)
    c = result.cohort
    click.echo(
        f"wrote {len(c.patients)} patients, {len(c.sessions)} sessions, "
        f"{len(c.assessments)} assessments, {len(result.truth)} truth episodes "
        f"in {time.perf_counter() - t0:.1f} s",
        err=True,
    )
    f = summarize(result)
    click.echo(
        "measured: induction incomplete {induction_incomplete:.1%}, stopped after the first "
        "{stopped_after_first:.1%}, induction response {induction_response:.1%} "
        "(remission {remission:.1%}) in {measured_patients:.0f} measurable patients; "
        "first episodes still in benefit at 28 days {benefit_28d:.1%}, "
        "at 56 days {benefit_56d:.1%} (truth)".format(**f),
        err=True,
    )


def _simulate_parts(n_patients: int, seed: int, out_dir: Path, patients_per_part: int,
                    **options: object) -> None:
    """``--patients-per-part``: simulate straight into a partitioned dataset."""
    from forecast.simulation.partitioned import simulate_partitioned

    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        click.echo(f"part {done}/{total} written ({time.perf_counter() - t0:.0f} s)", err=True)

    try:
        counts = simulate_partitioned(n_patients, seed, patients_per_part, out_dir,
                                      progress=progress, end_date=options["end"],
                                      schedule=options["schedule"],
                                      totals_only_share=options["totals_only_share"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(
        f"wrote {counts['patients']} patients, {counts['sessions']} sessions, "
        f"{counts['assessments']} assessments, {counts['truth']} truth episodes in "
        f"{counts['parts']} parts in {time.perf_counter() - t0:.1f} s", err=True)


COMMANDS.append(simulate_command)
