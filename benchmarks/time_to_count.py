"""Steps and wall seconds until held-out count accuracy first reaches 95%, per seed.

Trains the default recipe on each seed alone (the whole machine for one model, as a user
training one AIR would), evaluating every --eval-every steps; evaluation time is included
in the wall time. Target on a 2-core CPU: the median seed within 5 minutes. --max-steps is
the run's train.steps, so it also places the learning-rate decay (its last 40% by default).

    python benchmarks/time_to_count.py [--seeds 0,1,2] [--max-steps 10000] [--set k=v ...]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import click
import torch

from airsearch.config import AIRConfig, parse_assignments
from airsearch.evaluation.outcomes import ACCURACY
from airsearch.training.loop import train_seeds


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--max-steps", default=10000, show_default=True)
@click.option("--eval-every", default=250, show_default=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
def main(seeds: str, max_steps: int, eval_every: int, assignments: tuple[str, ...]) -> None:
    # Every seed trains --max-steps, so its final accuracy is the one at the run's end.
    overrides = {"train.steps": max_steps, "train.eval_every": eval_every,
                 "eval.verdicts": False, **parse_assignments(assignments)}
    config = AIRConfig.from_flat(overrides)
    seconds = []
    print(f"{torch.get_num_threads()} torch threads; threshold {config.eval.threshold}")
    for seed in [int(s) for s in seeds.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            summary = train_seeds(config, [seed], out_dir=Path(out), progress=False)
        result = summary.seeds[0]
        hit = next((h for h in result.history
                    if h[ACCURACY] >= config.eval.threshold), None)
        if hit is None:
            seconds.append(float("inf"))
            print(f"seed {seed}: not reached in {max_steps} steps ({result.outcome}, final "
                  f"accuracy {result.final.get('eval/count_accuracy', float('nan')):.3f}, "
                  f"{summary.wall_s:.0f} s)")
        else:
            seconds.append(hit["wall_s"])
            print(f"seed {seed}: {hit['step']} steps, {hit['wall_s']:.0f} s "
                  f"(final accuracy {result.final['eval/count_accuracy']:.3f})")
    median = statistics.median(seconds)
    if median == float("inf"):
        print(f"median seed: not at {config.eval.threshold} within {max_steps} steps "
              "(target < 5 min)")
    else:
        print(f"median seed: {median:.0f} s = {median / 60:.1f} min (target < 5 min)")


if __name__ == "__main__":
    main()
