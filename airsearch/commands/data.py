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
@click.option("--mirror", default=None, help="Base URL holding the four .gz files (default: "
              "the standard mirror); the MD5 checksums are checked either way.")
def fetch(target: Path | None, mirror: str | None) -> None:
    """Download the four standard MNIST IDX files and verify their MD5 checksums."""
    import urllib.error

    from airsearch.data import fetch_mnist
    from airsearch.data.mnist import MIRROR, ChecksumError

    mirror = mirror or MIRROR
    try:
        path = fetch_mnist(target, base_url=mirror)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(
            f"cannot download MNIST from {mirror} ({reason}); runs go on with the offline "
            "digit set, or point --mnist-dir / AIRSEARCH_MNIST_DIR at a folder with the four "
            "IDX files") from None
    except ChecksumError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"MNIST stored in {path}; runs now use it instead of the offline set")
