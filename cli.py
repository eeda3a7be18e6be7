"""airsearch command line: `python cli.py --help`."""

from __future__ import annotations

import click

from airsearch.data.commands import data
from airsearch.diagnostics.commands import diagnose
from airsearch.study.commands import study
from airsearch.training.commands import train


@click.group()
@click.version_option(package_name="airsearch")
def main() -> None:
    """Train Attend-Infer-Repeat and measure how reliably it learns to count."""


main.add_command(train)
main.add_command(data)
main.add_command(study)
main.add_command(diagnose)

if __name__ == "__main__":
    main()
