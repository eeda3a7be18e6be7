"""`diagnose`: measurements of a model that are not training, e.g. gradient variance."""

from __future__ import annotations

import json
from pathlib import Path

import click

from airsearch.config import AIRConfig, ConfigError, parse_assignments

ESTIMATORS = ("reinforce", "vimco", "relaxed")  # the rows `diagnose gradients` can compare


@click.group()
def diagnose() -> None:
    """Diagnostics of AIR: gradient variance of the estimators, the first step's value, how
    overlapping digits are counted."""


@diagnose.command(epilog="""\b
Examples:
  python cli.py diagnose gradients --samples 50 --out runs/diag
  python cli.py diagnose gradients --checkpoint runs/first/checkpoint.pt --samples 100
  python cli.py diagnose gradients --set model.mlp_width=32 --steps 200 --estimators reinforce""")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="checkpoint.pt of a training run (its config, seeds, weights and step).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable), on top of the checkpoint's config.")
@click.option("--samples", type=click.IntRange(min=2), default=50, show_default=True,
              help="Gradient estimates on the same batch.")
@click.option("--estimators", default=",".join(ESTIMATORS), show_default=True,
              help="Comma-separated subset of " + ", ".join(ESTIMATORS) + ".")
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train this many steps first (reinforce, as configured) when no checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed without a checkpoint.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/diagnose"), show_default=True, help="Output directory.")
@click.option("--mnist-dir", type=click.Path(exists=True, file_okay=False),
              envvar="AIRSEARCH_MNIST_DIR", help="Directory with the MNIST IDX files.")
def gradients(checkpoint: Path | None, assignments: tuple[str, ...], samples: int,
              estimators: str, steps: int, seed: int, out: Path, mnist_dir: str | None) -> None:
    """Per-parameter gradient variance of each estimator on one batch.

    Rows: reinforce without any baseline (no NVIL centring or normalisation, baseline output
    0), reinforce as configured (NVIL + neural baseline), vimco (particles >= 2) and relaxed
    (at the configured temperature for the step). Columns: mean variance of the parameters
    fed by back-propagation and of the presence head, fed only by the score function and the
    analytic KL of n (airsearch/evaluation/gradient_variance.py). Writes OUT/gradient_variance.json
    and OUT/gradient_variance.png.
    """
    import torch

    from airsearch.data import load_datasets
    from airsearch.diagnostics.estimator_comparison import (
        compare_estimators,
        plot_comparison,
        trained_state,
    )
    from airsearch.training.checkpoint import CheckpointError, read_checkpoint_file

    kinds = [k.strip() for k in estimators.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(ESTIMATORS))
    if unknown or not kinds:
        raise click.BadParameter(f"{estimators!r}: allowed are {', '.join(ESTIMATORS)}",
                                 param_hint="--estimators")
    try:
        saved = read_checkpoint_file(Path(checkpoint)) if checkpoint else None
    except CheckpointError as err:
        raise click.UsageError(str(err)) from None
    try:
        base = AIRConfig.from_flat(saved["config"]) if saved else AIRConfig()
        config = AIRConfig.from_flat(parse_assignments(assignments), base=base)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    seeds = saved["seeds"] if saved else [seed]
    train, _, _ = load_datasets(config.data, mnist_dir=mnist_dir)
    images = torch.from_numpy(train.images)
    if saved:
        state, step = saved["model"], int(saved["step"])
    else:
        state, step = trained_state(config, seeds, images, steps), steps
    batch = images[:config.train.batch_size].to(torch.float32) / 255.0  # (B, H, W)
    rows = compare_estimators(config, seeds, state, step,
                              batch.expand(len(seeds), *batch.shape), kinds, samples)
    click.echo(f"gradient variance per parameter element, {samples} estimates on one batch of "
               f"{config.train.batch_size}, step {step}, mean over {len(seeds)} replica(s)")
    click.echo(f"{'estimator':<34} {'backprop':>10} {'score-only':>10}")
    for row in rows:
        click.echo(f"{row['estimator']:<34} {row['backprop']:>10.3g} {row['score']:>10.3g}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradient_variance.json").write_text(json.dumps(
        {"samples": samples, "step": step, "seeds": seeds, "rows": rows}, indent=2))
    plot_comparison(rows, out / "gradient_variance.png")
    click.echo(f"wrote {out / 'gradient_variance.json'} and {out / 'gradient_variance.png'}")


@diagnose.command("first-step", epilog="""\b
Examples:
  python cli.py diagnose first-step --set data.digit_size=21 --set data.digit_size=10.5
  python cli.py diagnose first-step --set data.digit_size=10.5 --set init.decoder_bias=-5""")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a config key; a key given twice makes one row per value.")
@click.option("--images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Training images averaged over.")
@click.option("--seed", type=int, default=0, show_default=True, help="Init and noise seed.")
@click.option("--mnist-dir", type=click.Path(exists=True, file_okay=False),
              envvar="AIRSEARCH_MNIST_DIR", help="Directory with the MNIST IDX files.")
def first_step(assignments: tuple[str, ...], images: int, seed: int,
               mnist_dir: str | None) -> None:
    """What the first step is worth to the ELBO at initialisation, in nats per image.

    A step that costs more than it explains is switched off by the first REINFORCE updates;
    this shows the terms of that trade (see airsearch/diagnostics/first_step.py).
    """
    import torch

    from airsearch.data import load_datasets
    from airsearch.diagnostics.first_step import first_step_value
    from airsearch.model.air import AIR

    try:
        flats = _rows(assignments)
        configs = [AIRConfig.from_flat(flat) for flat in flats]
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{'configuration':<44} {'log-lik gain':>12} {'KL where':>9} {'KL what':>8} "
               f"{'prior':>7} {'net':>7} {'ink in window':>13}")
    for flat, config in zip(flats, configs, strict=True):
        train, _, info = load_datasets(config.data, mnist_dir=mnist_dir)
        x = torch.from_numpy(train.images[:images]).to(torch.float32) / 255.0
        value = first_step_value(AIR(config, [seed]), x, seed)
        label = ", ".join(f"{k}={v}" for k, v in flat.items()) or "(defaults)"
        click.echo(f"{label:<44} {value.log_lik_gain:>+12.1f} {value.kl_where:>9.1f} "
                   f"{value.kl_what:>8.1f} {value.prior_log_ratio:>+7.1f} {value.net:>+7.1f} "
                   f"{value.ink_in_window:>13.2f}")
    click.echo(f"data: {info.source}; nats per image, mean over {images} training images; "
               "net = gain - KL where - KL what + prior log-ratio")


def _rows(assignments: tuple[str, ...]) -> list[dict[str, str]]:
    """One config per value of each repeated key: --set a=1 --set a=2 --set b=3 gives
    {a: 1, b: 3} and {a: 2, b: 3}."""
    values: dict[str, list[str]] = {}
    for item in assignments:
        ((key, value),) = parse_assignments([item]).items()
        values.setdefault(key, []).append(value)
    rows: list[dict[str, str]] = [{}]
    for key, options in values.items():
        rows = [{**row, key: option} for row in rows for option in options]
    return rows


@diagnose.command("overlap", epilog="""\b
Examples:
  python cli.py train --seeds 0-3 --steps 3000 --set data.overlap=allow --out runs/overlap
  python cli.py diagnose overlap runs/overlap""")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mnist-dir", type=click.Path(exists=True, file_okay=False),
              envvar="AIRSEARCH_MNIST_DIR", help="Directory with the MNIST IDX files.")
def overlap(run_dir: Path, mnist_dir: str | None) -> None:
    """How a trained DAIR run counts two-digit held-out images, split by how the digits lie.

    Groups: apart (ink boxes do not meet), boxes cross, strokes cross (summed ink clipped).
    Per group: the share read as each count; ink the first two steps leave unexplained and
    ink they over-draw (pixels, mean per image); where each step's window is centred: in both
    digits' boxes, in one, or in neither (airsearch/diagnostics/overlap.py). Then the share
    counted right by how much the digits cover each other. Writes RUN_DIR/overlap.json.
    """
    import numpy as np

    from airsearch.data import load_datasets
    from airsearch.diagnostics.overlap import (
        WHERE,
        cover_rows,
        overlap_rows,
        read_two_digit_images,
    )
    from airsearch.model.air import AIR
    from airsearch.training.checkpoint import CHECKPOINT, CheckpointError, read_checkpoint_file

    try:
        saved = read_checkpoint_file(run_dir / CHECKPOINT)
        config = AIRConfig.from_flat(saved["config"])
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from None
    if not config.model.residual_input:
        raise click.UsageError("model.residual_input is false in this run: the diagnosis "
                               "reads what each DAIR step drew")
    model = AIR(config, saved["seeds"])
    model.load_state_dict(saved["model"])
    _, heldout, info = load_datasets(config.data, mnist_dir=mnist_dir)
    reading = read_two_digit_images(model, heldout)  # one pass, read by both tables
    rows = overlap_rows(model, heldout, reading)
    click.echo(f"{run_dir}: step {saved['step']}, seeds {saved['seeds']}, data.overlap="
               f"{config.data.overlap}, canvas {'saturated' if config.saturates() else 'summed'}"
               f"; held-out two-digit images ({info.source})")
    counts = range(config.model.max_steps + 1)
    click.echo(f"{'layout':<14} {'images':>6} " + " ".join(f"{'read ' + str(k):>7}" for k in counts)
               + f" {'missed':>7} {'overdrawn':>9}  window centre per step ("
               + " / ".join(WHERE) + ")")
    for row in rows:
        places = "  ".join("/".join(f"{v:.2f}" for v in step.values()) for step in row.window)
        click.echo(f"{row.group:<14} {row.images:>6} "
                   + " ".join(f"{row.read_as[k]:>7.2f}" for k in counts)
                   + f" {row.missed_ink:>7.1f} {row.overdrawn_ink:>9.1f}  {places}")
    covers = cover_rows(model, heldout, reading)
    click.echo("\nby how much the digits cover each other (share of the smaller ink box "
               "inside the other's)")
    click.echo(f"{'cover':<11} {'images':>6} {'share':>6}  read as 2: mean [min, max] over seeds")
    for row in covers:
        read = (f"{np.mean(row.read_as_two):.2f} [{min(row.read_as_two):.2f}, "
                f"{max(row.read_as_two):.2f}]" if row.images else "-")
        click.echo(f"{row.low:.2f}-{row.high:.2f}  {row.images:>6} {row.share:>6.2f}  {read}")
    (run_dir / "overlap.json").write_text(json.dumps(
        {"step": saved["step"], "seeds": saved["seeds"], "data": info.source,
         "rows": [row.to_dict() for row in rows],
         "by_cover": [row.to_dict() for row in covers]}, indent=2))
    click.echo(f"wrote {run_dir / 'overlap.json'}")
