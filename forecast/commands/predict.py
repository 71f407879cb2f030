"""``forecast predict``: one forecast row per patient of a clinic at one date."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from forecast.commands import models_option
from forecast.commands.cluster import dask_client, dask_options

COMMANDS: list[click.Command] = []

#: Patients per chunk: bounds memory (daily risk grids) and paces the progress bar.
CHUNK_PATIENTS = 2000


@click.command("predict")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "ref",
    default="latest",
    show_default=True,
    help='Model version: a version id, "latest", or the path of a version folder.',
)
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    required=True,
    help="Forecast date YYYY-MM-DD; rows dated after it are ignored.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output CSV, one row per patient (columns of the predict contract).",
)
@models_option()
@click.option(
    "--threshold",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True),
    default=None,
    help="Risk accepted at the suggested date, between 0 and 1 (default 0.20).",
)
@dask_options
def predict_command(
    folder: Path,
    ref: str,
    as_of: datetime,
    out: Path,
    models: Path | None,
    threshold: float | None,
    dask_spec: str | None,
    dask_memory: str | None,
) -> None:
    """Forecast every patient of FOLDER at --as-of and write one row each to --out.

    risk_Hd is the probability that the benefit will have waned within H days
    after the as-of date, given everything known up to it (time since the
    last session, the latest scores, no waning seen yet); it is blank where
    the status says no personalised forecast applies. The safety column is
    "urgent" or "review" when a suicidal-ideation rule fired since the last
    session; blank means no rule fired, which is not a suicide-risk
    assessment. Decision support only. With --dask, FOLDER is a partitioned
    dataset and each part is forecast by a task on the cluster (same rows).
    """
    import pandas as pd

    from forecast import registry
    from forecast.commands.problems import one_line
    from forecast.commands.progress import Progress
    from forecast.data import ContractError, load_cohort
    from forecast.policy import PolicySettings, forecast_rows, forecast_table

    t0 = time.perf_counter()
    try:
        model = registry.load(ref, registry.models_dir(models))
    except registry.RegistryError as exc:
        raise click.ClickException(f"cannot load model {ref!r}: {exc}") from exc
    settings = PolicySettings() if threshold is None else PolicySettings(threshold=threshold)
    day = pd.Timestamp(as_of).normalize()
    if dask_spec is not None:
        table = _predict_dask(folder, model, day, settings, dask_spec, dask_memory)
        _write(table, out, t0)
        return
    try:
        cohort = load_cohort(folder, covariates=model.covariates)
    except ContractError as exc:
        raise click.ClickException(one_line(exc.problems, folder)) from exc
    ids = cohort.patients["patient_id"].astype(str).to_numpy()
    click.echo(
        f"forecasting {len(ids)} patients as of {day.date()} with model {model.version}",
        err=True,
    )
    frames = []
    with Progress(len(ids), "predict") as bar:
        for start in range(0, len(ids), CHUNK_PATIENTS):
            chunk = ids[start : start + CHUNK_PATIENTS]
            frames.append(forecast_table(cohort.subset(chunk), model, day, settings))
            bar.update(len(chunk))
    table = pd.concat(frames, ignore_index=True) if frames else forecast_rows([])
    _write(table, out, t0)


def _predict_dask(folder: Path, model: Any, day: Any, settings: Any, spec: str,
                  memory: str | None) -> Any:
    """``forecast predict --dask``: one task per part (forecast.distributed.score)."""
    from forecast.commands.problems import one_line
    from forecast.commands.progress import Progress
    from forecast.data import ContractError
    from forecast.distributed.score import predict_dask

    click.echo(f"forecasting the patients of {folder} as of {day.date()} with model "
               f"{model.version} on Dask ({spec})", err=True)
    with dask_client(spec, memory) as client:
        from forecast.distributed.train import part_names

        try:
            n = len(part_names(folder))
            with Progress(n, "predict (parts)") as bar:
                return predict_dask(client, folder, model, day, settings, progress=bar.update)
        except ContractError as exc:
            raise click.ClickException(one_line(exc.problems, folder)) from exc


def _write(table: Any, out: Path, t0: float) -> None:
    """Write the predict rows and say what was written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    counts = table["status"].value_counts().to_dict()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    click.echo(
        f"wrote {len(table)} rows to {out} in {time.perf_counter() - t0:.1f} s ({summary}); "
        "decision support only, not a suicide-risk assessment",
        err=True,
    )


COMMANDS.append(predict_command)
