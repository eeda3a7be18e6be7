"""`train`: one configuration, one or many seeds, in this process."""

from __future__ import annotations

import json
from pathlib import Path

import click

from airsearch.config import AIRConfig, ConfigError, knob_specs, parse_assignments
from airsearch.evaluation.outcomes import ACCURACY


def parse_seeds(text: str) -> list[int]:
    """'0-7' -> 0..7; '1,4,9' -> [1, 4, 9]; ranges and lists combine ('0-3,10')."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-", 1)
                seeds += range(int(low), int(high) + 1)
            else:
                seeds.append(int(part))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected e.g. 0-7 or 0,3,5",
                                 param_hint="--seeds") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise click.BadParameter(f"{text!r}: need distinct non-negative seeds",
                                 param_hint="--seeds")
    return seeds


@click.command(epilog="""\b
Examples:
  python cli.py train --steps 2000 --out runs/first
  python cli.py train --seeds 0-7 --out runs/eight-seeds
  python cli.py train --set prior.z_pres.schedule=exponential --set prior.z_pres.initial=0.999999 \\
      --set prior.z_pres.final=1e-7 --set prior.z_pres.decay_end=0.8 --seed 3
  python cli.py train --resume runs/eight-seeds                 # go on after a kill
  python cli.py train --resume runs/first --steps 5000            # train a run longer
  python cli.py train --list-keys""")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable); see --list-keys.")
@click.option("--steps", type=int, help="Training steps (train.steps).")
@click.option("--seed", type=int, help="Train one seed.")
@click.option("--seeds", "seed_range", help="Train several seeds as replicas in one process: "
              "'0-7' or '0,3,5'.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/train"), show_default=True, help="Output directory.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option("--chunk-size", type=int, help="Replicas trained at once (default: as many as "
              "fit in memory).")
@click.option("--mnist-dir", type=click.Path(exists=True, file_okay=False),
              envvar="AIRSEARCH_MNIST_DIR", help="Directory with the MNIST IDX files.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="Go on with the run in this directory from its last "
              "checkpoint, as if it had never stopped (its own config and seeds; --steps may "
              "change train.steps, not below the step reached).")
@click.option("--overwrite", is_flag=True, help="Replace the run that --out already holds "
              "(without it, such a run is kept and nothing is trained).")
@click.option("--list-keys", is_flag=True, help="Print every config key with default and "
              "allowed values, then exit.")
def train(assignments: tuple[str, ...], steps: int | None, seed: int | None,
          seed_range: str | None, out: Path, device: str, chunk_size: int | None,
          mnist_dir: str | None, resume_dir: Path | None, overwrite: bool,
          list_keys: bool) -> None:
    """Train AIR on multi-MNIST and label each seed's outcome.

    Writes OUT/summary.json (config, data source, per-seed outcome and metrics, the
    convergence rate with a Wilson 95% interval), OUT/metrics.jsonl, OUT/checkpoint.pt and
    OUT/seed_<s>/reconstruction.png.
    """
    if list_keys:
        for key, spec in knob_specs().items():
            click.echo(f"{key} = {spec.default!r}   ({spec.allowed()}) {spec.help}")
        return
    from airsearch.training.checkpoint import (
        CHECKPOINT,
        CheckpointError,
        clear_run,
        load_checkpoint,
    )
    from airsearch.training.loop import train_seeds

    if seed is not None and seed_range is not None:
        raise click.UsageError("give --seed or --seeds, not both")
    checkpoint = None
    if resume_dir is not None:
        given = [name for name, present in (
            ("--set", bool(assignments)), ("--seed", seed is not None),
            ("--seeds", seed_range is not None), ("--overwrite", overwrite),
            ("--out", click.get_current_context().get_parameter_source("out").name != "DEFAULT"),
        ) if present]
        if given:
            raise click.UsageError(f"--resume continues a run with its own config, seeds and "
                                   f"directory: drop {', '.join(given)}")
        out = resume_dir
    try:
        if resume_dir is not None:
            checkpoint = load_checkpoint(resume_dir)
            base, seeds = checkpoint.config, checkpoint.all_seeds
        else:
            base = parse_assignments(assignments)
            seeds = parse_seeds(seed_range) if seed_range else [seed if seed is not None else 0]
        if steps is not None:
            base = {**base, "train.steps": steps}
        config = AIRConfig.from_flat(base)
        if resume_dir is None:
            config.check_effective(base)
    except (ConfigError, CheckpointError) as err:
        raise click.UsageError(str(err)) from None
    if overwrite:
        clear_run(out)
    try:
        summary = train_seeds(config, seeds, out_dir=out, device=device, chunk_size=chunk_size,
                              mnist_dir=mnist_dir, resume=checkpoint)
    except CheckpointError as err:  # refused before any training: what to resume, or keep
        raise click.UsageError(str(err)) from None
    except KeyboardInterrupt:
        saved = (out / CHECKPOINT).exists()
        click.echo(f"\ninterrupted; {out} keeps what was recorded up to the last evaluation"
                   + (f": go on with `python cli.py train --resume {out}`" if saved else ""),
                   err=True)
        raise SystemExit(130) from None
    click.echo(f"data: {summary.data['source']}")
    for result in summary.seeds:
        acc = result.final.get(ACCURACY, float("nan"))
        when = (f", reached at step {result.steps_to_converge} ({result.seconds_to_converge:.0f} s)"
                if result.steps_to_converge else "")
        click.echo(f"seed {result.seed}: {result.outcome} (held-out count accuracy {acc:.3f}"
                   f"{when})")
    click.echo(f"convergence rate: {summary.rate}   outcomes: "
               + json.dumps({k: v for k, v in summary.outcome_counts.items() if v}))
    click.echo(f"wrote {out / 'summary.json'}")
