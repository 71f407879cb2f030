"""``forecast validate``: check a data folder against the contract."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from forecast.commands.problems import arrange
from forecast.data import check_folder

COMMANDS: list[click.Command] = []


@click.command("validate")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--covariate",
    "covariates",
    multiple=True,
    metavar="NAME",
    help="Declare an extra numeric column of patients.csv as a covariate (repeatable).",
)
@click.option(
    "--today",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Reject dates after this day, written YYYY-MM-DD (default: the current date).",
)
def validate(folder: Path, covariates: tuple[str, ...], today: datetime | None) -> None:
    """Check the patients, sessions and assessments files of the folder DIR.

    Prints every problem (file, row, column, what is allowed, "did you mean"
    for a misspelled column), one per line, with the problems that follow from
    an earlier one counted in one line, then a count, and exits with status 1;
    prints a one-line summary and exits with status 0 when the folder conforms
    to the data contract.
    """
    day = today.date() if today is not None else None
    cohort, problems = check_folder(folder, covariates=covariates, today=day)
    if problems or cohort is None:
        lines, summaries = arrange(problems)
        for line in lines + summaries:
            click.echo(line)
        click.echo(f"{len(problems)} problem(s) found in {folder}"
                   + (f" ({len(problems) - len(lines)} of them follow from an earlier one)"
                      if summaries else ""))
        raise SystemExit(1)
    click.echo(
        f"OK: {len(cohort.patients)} patients, {len(cohort.sessions)} sessions, "
        f"{len(cohort.assessments)} assessments"
    )


COMMANDS.append(validate)


@click.command("partition")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="New folder for the partitioned dataset (patients/, sessions/, "
              "assessments/ with one Parquet file per part).")
@click.option("--patients-per-part", type=click.IntRange(min=1), required=True,
              help="Patients per part; a patient's rows are never split across parts.")
@click.option("--covariate", "covariates", multiple=True, metavar="NAME",
              help="Declare an extra numeric column of patients.csv as a covariate (repeatable).")
def partition(folder: Path, out_dir: Path, patients_per_part: int,
              covariates: tuple[str, ...]) -> None:
    """Split the contract folder DIR by patient into a partitioned dataset.

    DIR is validated first (exit 1 with its problems, as `forecast validate`).
    Patients go to parts in the order of their sorted ids. Every command that
    reads a folder also reads the result; `--dask` trains on it part by part
    (see docs/dask.md).
    """
    from forecast.data.partitioned import write_partitioned

    cohort, problems = check_folder(folder, covariates=covariates)
    if problems or cohort is None:
        lines, summaries = arrange(problems)
        for line in lines + summaries:
            click.echo(line)
        click.echo(f"{len(problems)} problem(s) found in {folder}")
        raise SystemExit(1)
    try:
        names = write_partitioned(cohort, out_dir, patients_per_part)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {len(cohort.patients)} patients in {len(names)} parts to {out_dir}")


COMMANDS.append(partition)
