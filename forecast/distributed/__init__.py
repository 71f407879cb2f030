"""Training, evaluation and prediction on a Dask cluster (``--dask ADDRESS|local[:WORKERS]``).

Dask is an optional extra (``pip install kap-forecast[dask]``): it is imported
here, lazily, only on the distributed code path; nothing else in the project
(and nothing in ``service/``) imports it. See docs/dask.md.

- :mod:`~forecast.distributed.parts`: what a worker computes on one part;
- :mod:`~forecast.distributed.fit`: the piecewise fit on distributed sums;
- :mod:`~forecast.distributed.train`: ``forecast train --dask``;
- :mod:`~forecast.distributed.score`: ``forecast predict --dask`` and
  ``forecast evaluate --dask``.
"""

from __future__ import annotations

import re
from typing import Any

#: Model kinds whose fit runs on distributed sums; the others need one machine.
DISTRIBUTED_KINDS: tuple[str, ...] = ("piecewise",)


class DaskUnavailable(RuntimeError):
    """The ``dask`` extra is not installed, or the cluster cannot be reached."""


def require_dask() -> Any:
    """Import ``dask.distributed``, or raise DaskUnavailable saying how to install it."""
    try:
        import dask.distributed as dd
    except ImportError as exc:
        raise DaskUnavailable(
            "--dask needs the optional dependency dask[distributed]: "
            "pip install 'kap-forecast[dask]'") from exc
    return dd


def connect(spec: str, memory_limit: str | None = None) -> Any:
    """A ``distributed.Client`` for ``spec``: a scheduler address (``tcp://host:8786``)
    or ``local[:WORKERS]`` (a LocalCluster of that many single-threaded worker processes,
    default 2, each limited to ``memory_limit``, default Dask's share of the machine)."""
    dd = require_dask()
    m = re.fullmatch(r"local(?::(\d+))?", spec.strip())
    try:
        if m:
            workers = int(m.group(1) or 2)
            if workers < 1:
                raise DaskUnavailable("local:WORKERS needs at least 1 worker")
            cluster = dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      memory_limit=memory_limit or "auto",
                                      dashboard_address=":0")
            return dd.Client(cluster)
        return dd.Client(spec, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise DaskUnavailable(f"cannot reach the Dask scheduler at {spec}: {exc}") from exc


def close(client: Any) -> None:
    """Close ``client`` and, for ``local``, its cluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None and type(cluster).__name__ == "LocalCluster":
        cluster.close()
