"""A reduced study with and without early verdicts: wall time, and each seed's label both ways.

Trains every configuration of a study file (default: the quickstart) on its seeds twice in
this one process, one after the other on the same threads: with eval.verdicts (a decided seed
leaves the batch) and without (every seed trains train.steps). Prints each seed's outcome
both ways, where the verdict run stopped it, the agreement, and the wall-time ratio.

    python benchmarks/verdicts.py [--study studies/quickstart.yaml] [--seeds 8] [--threads 2]
"""

from __future__ import annotations

import time

import click
import torch

from airsearch.study.spec_file import load_spec
from airsearch.training.loop import train_seeds


@click.command()
@click.option("--study", "path", default="studies/quickstart.yaml", show_default=True)
@click.option("--seeds", default=8, show_default=True, help="Seeds 0..N-1 per configuration.")
@click.option("--threads", default=2, show_default=True)
def main(path: str, seeds: int, threads: int) -> None:
    torch.set_num_threads(threads)
    spec = load_spec(path)
    chosen = list(range(seeds))
    wall = {True: 0.0, False: 0.0}
    agree = total = 0
    print(f"study {spec.name}: {len(spec.configurations())} configurations x {seeds} seeds, "
          f"{spec.steps} steps, {threads} threads")
    for overrides in spec.configurations():
        runs = {}
        for verdicts in (True, False):
            config = spec.config_for({**overrides, "eval.verdicts": verdicts})
            start = time.perf_counter()
            runs[verdicts] = train_seeds(config, chosen, progress=False).seeds
            wall[verdicts] += time.perf_counter() - start
        print(f"\n{overrides or '(fixed config)'}")
        print(f"{'seed':>4}  {'with verdicts':<18} {'stopped at':>10}  {'full run':<18} same")
        for early, full in zip(runs[True], runs[False], strict=True):
            same = early.outcome == full.outcome
            agree += same
            total += 1
            stopped = "-" if early.stopped_at_step is None else str(early.stopped_at_step)
            print(f"{early.seed:>4}  {early.outcome:<18} {stopped:>10}  {full.outcome:<18} "
                  f"{'yes' if same else 'NO'}")
    print(f"\nagreement: {agree}/{total} seeds labelled alike")
    print(f"wall time: with verdicts {wall[True]:.0f} s, without {wall[False]:.0f} s, "
          f"ratio {wall[True] / wall[False]:.2f}")


if __name__ == "__main__":
    main()
