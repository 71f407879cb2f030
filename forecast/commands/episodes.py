"""``forecast episodes``: export the interval-censored episode table for researchers."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("episodes")
@click.argument(
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file; .csv or .parquet (the suffix picks the format).",
)
@click.option(
    "--covariate",
    "covariates",
    multiple=True,
    help="Declare an extra numeric column of patients.csv as a covariate (repeatable).",
)
@click.option(
    "--confirm-waning",
    is_flag=True,
    default=False,
    help="Require the symptom criterion of waning at two consecutive assessments.",
)
@click.option(
    "--all-sessions",
    is_flag=True,
    default=False,
    help="Also write sessions that started no episode (responded=false, with the reason).",
)
@click.option(
    "--response-window",
    type=click.IntRange(1, 90),
    default=14,
    show_default=True,
    help="Days after the first induction session within which the first PHQ-9 must show "
    "response (a later session: 42 days, or this if longer).",
)
@click.option(
    "--baseline-window",
    type=click.IntRange(0, 365),
    default=30,
    show_default=True,
    help="Maximum days between the baseline PHQ-9 and the first induction session.",
)
def episodes_command(
    directory: Path,
    out: Path,
    covariates: tuple[str, ...],
    confirm_waning: bool,
    all_sessions: bool,
    response_window: int,
    baseline_window: int,
) -> None:
    """Write one row per benefit episode of the cohort in DIRECTORY.

    DIRECTORY holds patients, sessions and assessments (.csv or .parquet).
    Each row is a responding session with the interval (lower, upper] in days
    after the session in which the benefit waned (upper = inf: right-censored).
    """
    from forecast.data import ContractError, load_cohort  # heavy; only when run
    from forecast.episodes import build_episodes
    from forecast.outcomes import OutcomeDefinition

    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise click.BadParameter("the file name must end in .csv or .parquet", param_hint="--out")
    try:
        cohort = load_cohort(directory, covariates=covariates)
    except ContractError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.exceptions.Exit(1) from None
    definition = OutcomeDefinition(
        confirm_waning=confirm_waning,
        response_window_days=response_window,
        baseline_window_days=baseline_window,
    )
    table = build_episodes(cohort, definition, include_non_responding=all_sessions)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        table.to_csv(out, index=False, date_format="%Y-%m-%d")
    else:
        table.to_parquet(out, index=False)
    n_ep = int(table["responded"].sum())
    n_ev = int(table["event"].fillna(False).astype(bool).sum())
    click.echo(
        f"wrote {n_ep} episodes ({n_ev} with waning observed) of "
        f"{table['patient_id'].nunique()} patients to {out}",
        err=True,
    )


COMMANDS: list[click.Command] = [episodes_command]
