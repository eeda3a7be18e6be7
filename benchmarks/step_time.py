"""One AIR training step against the matmul floor of the same FLOPs, measured in one run.

Counts the FLOPs of a full training step (forward, backward, optimiser) of the default
architecture at batch 64 with torch's FlopCounterMode, times the step and a square matmul,
and scales the matmul to the step's FLOPs: the time the step would take if all its work ran
at this machine's matmul speed. Target on a 2-core CPU: step / floor <= 2.

Two ways a CPU trains, both measured:
- one step on all threads (`python cli.py train`): the step is split into its phases
  (forward, backward, update = guard and optimiser), each timed and counted on its own;
- one single-threaded step per core, side by side (how studies run trials of one CPU each):
  each process times its step against a single-threaded matmul under the same load.
Steps and matmuls are timed alternately (benchmarks/speed.py), and so is a replay of the
step's own matmuls alone (row "matmuls"): what the step's shapes cost against the square
matmul, and, subtracted from the step, what all its other work costs.

    python benchmarks/step_time.py [--set key=value ...] [--replicas R] [--repeats N]
                                   [--side-by-side P]
"""

from __future__ import annotations

import os
import statistics

import click
from speed import time_step, time_steps_side_by_side

from airsearch.config import AIRConfig, parse_assignments


@click.command()
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
@click.option("--replicas", default=1, show_default=True)
@click.option("--repeats", default=30, show_default=True)
@click.option("--side-by-side", "processes", type=int, default=os.cpu_count() or 1,
              show_default="the CPU count", help="Single-threaded processes timed at once "
              "(0: skip).")
def main(assignments: tuple[str, ...], replicas: int, repeats: int, processes: int) -> None:
    config = AIRConfig.from_flat({"data.train_images": 2048, **parse_assignments(assignments)})
    whole = time_step(config, replicas, repeats)
    print(f"data: {whole.data_source}")
    print(f"config: batch {config.train.batch_size}, replicas {replicas}, "
          f"{config.model.max_steps} steps, LSTM {config.model.lstm_size}, "
          f"MLP {config.model.mlp_depth}x{config.model.mlp_width}")
    rate = whole.matmul_rate
    print(f"\none step on {whole.threads} threads; floor: square float32 matmul at "
          f"{rate / 1e9:.1f} GFLOP/s")
    print(f"{'phase':<9} {'median ms':>9} {'GFLOP':>7} {'floor ms':>8} {'ratio':>6}")
    for name, s in whole.seconds.items():
        flops = whole.flops[name]
        ratio = f"{whole.ratio(name):5.2f}x" if flops else "     -"
        print(f"{name:<9} {s * 1e3:9.1f} {flops / 1e9:7.3f} {flops / rate * 1e3:8.1f} {ratio}")
    print(f"ratio step / floor, {whole.threads} threads on one step: {whole.ratio():.2f}x "
          f"(target <= 2x; median of {repeats} steps, each phase's median on its own row)")
    rest = whole.seconds["step"] - whole.seconds["matmuls"]
    print(f"the step's matmuls alone, at its shapes: {whole.ratio('matmuls'):.2f}x the floor; "
          f"all its other work: {rest * 1e3:.1f} ms = {rest * rate / whole.flops['step']:.2f}x "
          "the floor")
    if processes < 1:
        return
    apart = time_steps_side_by_side(config, replicas, repeats, processes)
    print(f"\n{processes} single-threaded steps side by side, each against a single-threaded "
          "matmul under the same load")
    print(f"{'process':<9} {'step ms':>9} {'GFLOP/s':>8} {'floor ms':>8} {'ratio':>6} "
          f"{'matmuls alone':>13}")
    for i, timing in enumerate(apart):
        print(f"{i:<9} {timing.seconds['step'] * 1e3:9.1f} {timing.matmul_rate / 1e9:8.1f} "
              f"{timing.flops['step'] / timing.matmul_rate * 1e3:8.1f} {timing.ratio():5.2f}x "
              f"{timing.ratio('matmuls'):12.2f}x")
    per_step = statistics.median(t.seconds["step"] for t in apart) / processes
    print(f"ratio step / floor, one thread per step: "
          f"{statistics.median(t.ratio() for t in apart):.2f}x (target <= 2x; median over "
          f"processes); the machine trains a step every {per_step * 1e3:.1f} ms this way, "
          f"against {whole.seconds['step'] * 1e3:.1f} ms with all threads on one step")


if __name__ == "__main__":
    main()
