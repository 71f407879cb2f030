"""``forecast train`` and ``forecast evaluate`` (registered by forecast.cli)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pandas as pd

from forecast.bundle import DEFAULT_KIND, KINDS
from forecast.commands import models_option
from forecast.commands.cluster import dask_client, dask_options
from forecast.commands.progress import Progress
from forecast.commands.progress import quiet as progress_quiet

COMMANDS: list[click.Command] = []

_DATA_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _progress(total: int, desc: str) -> Progress:
    # stderr only: stdout of `train` is the version id and nothing else.
    return Progress(total, desc)


def _penalizer(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise click.BadParameter(f"got {value!r}; expected 'auto' or a number >= 0")
    return number


def _load(data_dir: Path, covariates: tuple[str, ...]):  # noqa: ANN202
    from forecast.commands.problems import one_line
    from forecast.data import ContractError, load_cohort

    try:
        return load_cohort(data_dir, covariates=covariates)
    except ContractError as exc:
        raise click.ClickException(one_line(exc.problems, data_dir)) from exc


def _truth(folder: Path) -> pd.DataFrame | None:
    """The simulator's ``truth.csv`` of ``folder``, or None.

    Oracle metrics and the policy replay need the latent truth written by
    ``forecast simulate``. A folder without it, or with a ``truth.csv`` of
    another format (a clinic's file, another generator's), is treated as real
    data: the oracle is skipped with a note on stderr, never a crash.
    """
    from forecast.simulation import TRUTH_COLUMNS, read_truth

    path = folder / "truth.csv"
    if not path.is_file():
        return None
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in TRUTH_COLUMNS if c not in header]
    if missing:
        click.echo(
            f"note: {path} is not a truth file of `forecast simulate` (missing "
            f"{', '.join(missing)}); oracle metrics and the policy replay are skipped",
            err=True,
        )
        return None
    return read_truth(path)


@click.command("train")
@click.argument("data_dir", type=_DATA_DIR)
@models_option("models_opt")
@click.option("--kind", type=click.Choice(KINDS), default=DEFAULT_KIND, show_default=True,
              help="Model kind: piecewise (piecewise-exponential hazard on the days since the "
                   "last assessment without waning, effects by window; default), dynamic (AFT "
                   "on the episode's clock, left-truncated at that assessment), landmark (AFT "
                   "of the residual time from the as-of date), static "
                   "weibull/lognormal/loglogistic AFT, cox, or km (population baseline).")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=0), default=30,
              show_default=True, help="Patient-level bootstrap refits stored for risk bands.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap and of any subsampling.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel bootstrap refits.")
@click.option("--penalizer", default="auto", show_default=True, callback=_penalizer,
              help="L2 penalty on standardised coefficients: a number >= 0, or 'auto' "
                   "(landmark: chosen by held-out Brier score; other kinds: 0.01).")
@click.option("--covariate", "covariates", multiple=True,
              help="Extra numeric column of patients.csv to use as a covariate (repeatable).")
@dask_options
def train_command(data_dir: Path, models_opt: Path | None, kind: str, n_bootstrap: int,
                  seed: int, jobs: int, penalizer: float, covariates: tuple[str, ...],
                  dask_spec: str | None, dask_memory: str | None) -> None:
    """Train a model on the cohort in DATA_DIR and save it as a new registry version.

    Prints only the new version id on stdout (progress goes to stderr). With
    --dask, DATA_DIR is a partitioned dataset and the fit runs on the cluster
    (piecewise only; the same version as on one machine, see docs/dask.md).
    """
    from forecast import registry, signing
    from forecast.models import ModelFitError
    from forecast.training import train_and_save

    if dask_spec is not None:
        _train_dask(data_dir, models_opt, kind, n_bootstrap, seed, penalizer, covariates,
                    dask_spec, dask_memory)
        return

    # Before any work: a read-only registry or an unreadable key fails now, not after the fit.
    registry.check_writable(registry.models_dir(models_opt))
    key = signing.signing_key()
    if key is None and not progress_quiet():
        click.echo(f"note: no signing key configured ({signing.KEY_FILE_ENV}); this version "
                   "is unsigned and a service loads it only with "
                   f"{signing.ALLOW_UNSIGNED_ENV}=1 (docs/registry.md)", err=True)
    with _progress(4, "train") as bar:
        bar.stage("load")
        cohort = _load(data_dir, covariates)

        def step(stage: str) -> None:
            bar.update()
            bar.stage(stage)

        try:
            version = train_and_save(
                cohort, models_opt, kind=kind, n_bootstrap=n_bootstrap, seed=seed, jobs=jobs,
                penalizer=penalizer, simulated=_truth(data_dir) is not None, progress=step,
            )
        except (ModelFitError, ValueError) as exc:
            raise click.ClickException(f"training failed: {exc}") from exc
        bar.update()
    if covariates:
        click.echo(
            f"note: this version uses declared covariates ({', '.join(covariates)}); "
            "forecast predict and evaluate read them from the folder; the service serves "
            f"it when started with FORECAST_COVARIATES={','.join(covariates)}",
            err=True,
        )
    click.echo(version)


COMMANDS.append(train_command)


def _train_dask(data_dir: Path, models_opt: Path | None, kind: str, n_bootstrap: int,
                seed: int, penalizer: float | str, covariates: tuple[str, ...], spec: str,
                memory: str | None) -> None:
    """``forecast train --dask``: see forecast.distributed.train."""
    from forecast import registry, signing
    from forecast.commands.problems import one_line
    from forecast.data import ContractError
    from forecast.models import ModelFitError

    if kind != "piecewise":
        raise click.UsageError(f"--kind {kind} needs one machine: only piecewise trains on a "
                               "Dask cluster (run without --dask, or use --kind piecewise)")
    registry.check_writable(registry.models_dir(models_opt))
    signing.signing_key()
    from forecast.distributed.train import train_and_save_dask

    with dask_client(spec, memory) as client, _progress(2, "train (Dask)") as bar:
        def step(stage: str) -> None:
            bar.stage(stage)

        try:
            version = train_and_save_dask(
                client, data_dir, models_opt, kind=kind, n_bootstrap=n_bootstrap, seed=seed,
                penalizer=penalizer, covariates=covariates,
                simulated=_truth(data_dir) is not None, progress=step)
        except ContractError as exc:
            raise click.ClickException(one_line(exc.problems, data_dir)) from exc
        except (ModelFitError, ValueError) as exc:
            raise click.ClickException(f"training failed: {exc}") from exc
        bar.update(2)
    click.echo(version)


@click.command("evaluate")
@click.argument("data_dir", type=_DATA_DIR)
@click.option("--model", "ref", default="latest", show_default=True,
              help="Version to evaluate: a version id, 'latest', or a version folder path.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Report folder: metrics.json, report.html, model_card.md.")
@models_option("models_opt")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Patient-grouped cross-validation folds.")
@click.option("--holdout", "holdout_dir", type=_DATA_DIR, default=None,
              help="Another cohort folder: apply the version itself to it.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Folds fitted in parallel.")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="Cross-validate this kind instead of the version's own kind.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold split.")
@click.option("--policy", "with_policy", is_flag=True,
              help="Also replay maintenance policies against the simulator's truth "
                   "(needs truth.csv; uses the holdout cohort when given).")
@click.option("--covariate", "covariates", multiple=True,
              help="Extra numeric column of patients.csv to use as a covariate (repeatable).")
@click.option("--no-record", is_flag=True,
              help="Do not record the evaluation in the registry (`forecast models approve` "
                   "rests on a recorded evaluation).")
# The default is evaluation.DEFAULT_CI_REPS (a test checks; importing it here would load
# the evaluation stack for every command).
@click.option("--ci-reps", type=click.IntRange(min=0), default=100, show_default=True,
              help="Patient-level bootstrap resamples for the 95% intervals of the headline "
                   "figures (AUC 28 d, ICI 28/56 d, gap to the oracle), and up to 20 draws of "
                   "the calibrated reference ICI; 0 skips both.")
@dask_options
def evaluate_command(data_dir: Path, ref: str, out_dir: Path, models_opt: Path | None,
                     folds: int, holdout_dir: Path | None, jobs: int, kind: str | None,
                     seed: int, with_policy: bool, covariates: tuple[str, ...],
                     no_record: bool, ci_reps: int, dask_spec: str | None,
                     dask_memory: str | None) -> None:
    """Cross-validate a model version's spec on DATA_DIR against the baselines (KM, Cox).

    Writes REPORT/metrics.json, REPORT/report.html and REPORT/model_card.md,
    and records the evaluation's headline figures with the version in the
    registry (what `forecast models approve` checks against its gates).
    On simulated data (truth.csv present) the oracle's metrics are reported too.
    With --dask the cross-validation folds run as tasks on the cluster (the
    cohort and the folds' rows are built on this machine; see docs/dask.md).
    """
    from forecast import evaluation, lifecycle, registry
    from forecast.evaluation.report import render
    from forecast.model_card import render_markdown

    root = registry.models_dir(models_opt)
    model = registry.load(ref, root)
    if not no_record:
        registry.check_writable(root)
    _writable_out(out_dir)
    cohort = _load(data_dir, covariates)
    truth = _truth(data_dir)
    est_params = dict(model.bundle.meta.get("estimator", {}))
    spec_kind = kind or model.bundle.kind
    from forecast.models import ESTIMATORS

    allowed = set(ESTIMATORS[spec_kind]().get_params()) - {"features", "n_jobs", "n_bootstrap"}
    params = {k: v for k, v in est_params.items() if k in allowed}
    params["random_state"] = seed
    metrics: dict = {
        "model_version": model.version,
        "model_kind": spec_kind,
        "horizons": list(model.bundle.horizons),
        "conversion": evaluation.CONVERSION_TEXT,
        "data_fingerprint": registry.fingerprint_cohort(cohort)["sha256"],
    }
    with _progress(folds, "evaluate (cross-validation folds)") as bar, \
            _folds_on(dask_spec, dask_memory, jobs) as fold_jobs:
        try:
            metrics["cv"] = evaluation.evaluate_cohort(
                cohort, evaluation.ModelSpec(spec_kind, params), definition=model.definition,
                truth=truth, n_folds=folds, seed=seed, jobs=fold_jobs,
                horizons=model.bundle.horizons, progress=bar.update, ci_reps=ci_reps,
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    metrics["targets"] = evaluation.targets(metrics["cv"])
    policy_cohort, policy_truth = cohort, truth
    if holdout_dir is not None:
        if not progress_quiet():
            click.echo(f"applying {model.version} to {holdout_dir}...", err=True)
        hcohort = _load(holdout_dir, covariates)
        htruth = _truth(holdout_dir)
        metrics["holdout"] = evaluation.evaluate_bundle(
            hcohort, model.bundle, definition=model.definition, truth=htruth,
            horizons=model.bundle.horizons, ci_reps=ci_reps)
        policy_cohort, policy_truth = hcohort, htruth
    policy_html = None
    out_dir.mkdir(parents=True, exist_ok=True)
    if with_policy:
        if not progress_quiet():
            click.echo("replaying maintenance policies...", err=True)
        from forecast.policy.replay import evaluate_policy  # lazy: matplotlib

        try:
            result = dict(evaluate_policy(policy_cohort, model, policy_truth, out_dir))
        except Exception as exc:  # noqa: BLE001 - the report says why the replay failed
            metrics["policy"] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            policy_html = result.pop("html", None)
            metrics["policy"] = result
    (out_dir / "metrics.json").write_text(registry.dumps(metrics))
    (out_dir / "report.html").write_text(render(metrics, policy_html=policy_html))
    card = {**model.card, "metrics": metrics, "metrics_note": None}
    (out_dir / "model_card.md").write_text(render_markdown(card))
    click.echo(f"wrote {out_dir}/metrics.json, report.html, model_card.md", err=True)
    if not no_record:
        event = lifecycle.record_evaluation(root, model.version, metrics, out_dir.resolve())
        click.echo(f"recorded evaluation {event['evaluation_id']} of {model.version} in {root} "
                   f"(next: `forecast models approve {model.version}`)", err=True)


@contextmanager
def _folds_on(spec: str | None, memory: str | None, jobs: int) -> Iterator[int]:
    """Where the folds run: joblib here (``jobs``), or Dask tasks on the cluster."""
    if spec is None:
        yield jobs
        return
    from forecast.distributed.score import joblib_on

    with dask_client(spec, memory) as client, joblib_on(client) as n:
        yield n


def _writable_out(out_dir: Path) -> None:
    """Fail before the cross-validation when the report folder cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the report folder {out_dir} ({exc.strerror or exc}); "
            "give a writable folder with --out") from None


COMMANDS.append(evaluate_command)
