"""The ``--dask`` options of train, evaluate and predict, and the client they open."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


def dask_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--dask ADDRESS|local[:WORKERS]`` and ``--dask-memory-limit`` to a command."""
    fn = click.option(
        "--dask-memory-limit", "dask_memory", default=None, metavar="SIZE",
        help="With --dask local[:WORKERS]: memory limit of each worker, e.g. 4GB "
             "(default: Dask's share of this machine).")(fn)
    return click.option(
        "--dask", "dask_spec", default=None, metavar="ADDRESS|local[:WORKERS]",
        help="Run on a Dask cluster: a scheduler address (tcp://host:8786) or local[:WORKERS] "
             "for worker processes on this machine. Needs a partitioned dataset and the "
             "dask extra; see docs/dask.md.")(fn)


@contextmanager
def dask_client(spec: str, memory_limit: str | None = None) -> Iterator[Any]:
    """A Dask client for ``spec`` (closed after the block); missing extra -> click error."""
    from forecast.distributed import DaskUnavailable, close, connect

    try:
        client = connect(spec, memory_limit)
    except DaskUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield client
    finally:
        close(client)
