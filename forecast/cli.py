"""The ``forecast`` command line (one click group; commands live in forecast.commands).

Every anticipated failure ends in one line ``Error: ...`` with what to do, and
a documented exit status (docs/command-line.md, "Errors and exit status"):
1 for data, model and registry problems, 2 for usage, 3 for an unexpected
internal error. A traceback is printed only with ``forecast --debug``.
"""

from __future__ import annotations

import difflib
import errno
import sys
import traceback
from typing import Any

import click

from forecast.commands import clinic, data, episodes, modelling, models, predict, server, simulate

#: exit status of an unexpected (internal) error
INTERNAL_EXIT = 3


def _known_error(exc: BaseException) -> str | None:
    """The one-line message of an anticipated failure, or None."""
    from forecast import lifecycle, plausibility, registry, signing

    if isinstance(exc, registry.RegistryError | lifecycle.LifecycleError
                  | signing.SignatureError | plausibility.ImplausibleModel):
        return str(exc)
    from forecast.data import ContractError

    if isinstance(exc, ContractError):
        from forecast.commands.problems import one_line

        return one_line(exc.problems)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return (f"cannot write{where}: {exc.strerror}; choose a writable folder "
                    "(for models: --models DIR or FORECAST_MODELS)")
        if exc.errno == errno.ENOSPC:
            return f"no space left on the device{where}; free space or choose another folder"
        if exc.errno == errno.ENOENT:
            return f"no such file or folder{where}; check the path"
        return f"{exc.strerror or exc}{where}"
    if type(exc).__name__ in ("ModelFitError", "StoreError"):
        return str(exc)
    return None


class ForecastGroup(click.Group):
    """The root group: one-line errors, "did you mean" for commands."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            ctx.fail(f"No such command '{name}'.{hint} (see `forecast --help`)")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.UsageError, KeyboardInterrupt,
                SystemExit):
            raise
        except click.ClickException as exc:
            if ctx.meta.get("forecast.debug") and exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__, file=sys.stderr)
            raise
        except Exception as exc:
            if ctx.meta.get("forecast.debug"):
                raise
            message = _known_error(exc)
            if message is not None:
                raise click.ClickException(message) from exc
            error = click.ClickException(
                f"internal error ({type(exc).__name__}: {exc}); rerun with "
                "`forecast --debug ...` for the traceback and report it")
            error.exit_code = INTERNAL_EXIT
            raise error from exc


@click.group(cls=ForecastGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kap-forecast")
@click.option("--debug", is_flag=True, envvar="FORECAST_DEBUG",
              help="Show the Python traceback of an error (also FORECAST_DEBUG=1).")
@click.option("--quiet", "-q", is_flag=True, envvar="FORECAST_QUIET",
              help="No progress bars or progress lines on stderr (also FORECAST_QUIET=1).")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Measure ketamine-treatment outcomes and forecast when maintenance is due.

    Decision support only: forecasts never assess suicide risk.
    """
    ctx.meta["forecast.debug"] = debug
    ctx.meta["forecast.quiet"] = quiet


for _module in (data, simulate, episodes, modelling, models, predict, server, clinic):
    for _command in _module.COMMANDS:
        main.add_command(_command)
