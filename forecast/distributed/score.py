"""``forecast predict --dask`` (one task per part) and ``forecast evaluate --dask`` (the
cross-validation folds as Dask tasks through joblib's Dask backend)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from forecast.data.partitioned import load_part

#: Patients per forecast call within a part (as the one-machine ``forecast predict``).
CHUNK_PATIENTS = 2000


def predict_part(folder: str, part: str, model: Any, day: pd.Timestamp, settings: Any
                 ) -> pd.DataFrame:
    """The predict rows of one part's patients (validated as a contract folder first)."""
    from forecast.policy import forecast_rows, forecast_table

    cohort = load_part(Path(folder), part, covariates=model.covariates)
    ids = cohort.patients["patient_id"].astype(str).to_numpy()
    frames = [forecast_table(cohort.subset(ids[s:s + CHUNK_PATIENTS]), model, day, settings)
              for s in range(0, len(ids), CHUNK_PATIENTS)]
    return pd.concat(frames, ignore_index=True) if frames else forecast_rows([])


def predict_dask(client: Any, folder: Path, model: Any, day: pd.Timestamp, settings: Any,
                 progress: Any = None) -> pd.DataFrame:
    """Forecast every patient of the partitioned dataset ``folder``: one task per part.

    The model (bundle, no patient rows) goes to the workers once; each part's
    rows come back in part order. ContractError when a part breaks the contract.
    """
    from dask.distributed import as_completed

    from forecast.data.problems import ContractError
    from forecast.distributed.train import part_names

    parts = part_names(folder)
    shared = client.scatter(model, broadcast=True)
    futures = [client.submit(predict_part, str(folder), p, shared, day, settings) for p in parts]
    for f in as_completed(futures):
        if f.status == "error" and isinstance(f.exception(), ContractError):
            for g in futures:
                g.cancel()
            raise f.exception()
        if progress is not None:
            progress(1)
    return pd.concat(client.gather(futures), ignore_index=True)


@contextmanager
def joblib_on(client: Any) -> Iterator[int]:
    """joblib's Parallel runs its tasks on ``client``'s cluster within the block; yields the
    number of worker threads (the ``jobs`` to ask for)."""
    import joblib

    with joblib.parallel_config(backend="dask"):
        yield max(1, sum(client.nthreads().values()))
