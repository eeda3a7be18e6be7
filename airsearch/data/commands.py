"""`data fetch`: download full MNIST once, with checksums, into the local cache."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Manage the MNIST digits AIR trains on."""


@data.command(epilog="Example:\n  python cli.py data fetch")
@click.option("--dir", "target", type=click.Path(file_okay=False, path_type=Path),
              help="Where to store the IDX files (default: the airsearch cache).")
def fetch(target: Path | None) -> None:
    """Download the four standard MNIST IDX files and verify their MD5 checksums."""
    from airsearch.data import fetch_mnist

    path = fetch_mnist(target)
    click.echo(f"MNIST stored in {path}; runs now use it instead of the offline set")
