"""airsearch command line: `python cli.py --help`."""

from __future__ import annotations

import click

from airsearch.commands.data import data
from airsearch.commands.diagnose import diagnose
from airsearch.commands.study import study
from airsearch.commands.train import train


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
