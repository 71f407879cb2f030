"""The ``forecast`` command line (one click group; commands live in forecast.commands)."""

from __future__ import annotations

import click

from forecast.commands import clinic, data, episodes, modelling, predict, server, simulate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kap-forecast")
def main() -> None:
    """Measure ketamine-treatment outcomes and forecast when maintenance is due.

    Decision support only: forecasts never assess suicide risk.
    """


for _module in (data, simulate, episodes, modelling, predict, server, clinic):
    for _command in _module.COMMANDS:
        main.add_command(_command)
