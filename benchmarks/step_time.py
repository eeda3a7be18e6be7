"""One AIR training step against the matmul floor of the same FLOPs, measured in one run.

Counts the FLOPs of a full training step (forward, backward, optimiser) of the default
architecture at batch 64 with torch's FlopCounterMode, times the step and a square matmul,
and scales the matmul to the step's FLOPs: the time the step would take if all its work ran
at this machine's matmul speed. Target on a 2-core CPU: step / floor <= 2.

The step is also split into its phases (forward, backward, update = guard and optimiser),
each timed and counted on its own: where the ratio is lost, and what no change to the
optimiser alone can recover. Steps and matmuls are timed alternately
(airsearch.training.speed).

    python benchmarks/step_time.py [--set key=value ...] [--replicas R] [--repeats N]
"""

from __future__ import annotations

import click
import torch

from airsearch.config import AIRConfig, parse_assignments
from airsearch.data import load_datasets
from airsearch.training.speed import interleaved_seconds, phase_flops, square_matmul
from airsearch.training.trainer import ReplicaStep


@click.command()
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
@click.option("--replicas", default=1, show_default=True)
@click.option("--repeats", default=30, show_default=True)
def main(assignments: tuple[str, ...], replicas: int, repeats: int) -> None:
    config = AIRConfig.from_flat({"data.train_images": 2048, **parse_assignments(assignments)})
    train, _, info = load_datasets(config.data)
    step = ReplicaStep(config, list(range(replicas)), torch.from_numpy(train.images))
    flops = phase_flops(step, 0)
    flops["step"] = sum(flops.values())
    matmul, side = square_matmul(flops["step"])
    seconds = interleaved_seconds(step, matmul, repeats)
    rate = 2 * side ** 3 / seconds.pop("matmul")  # the square matmul's FLOP/s in this run
    print(f"machine: {torch.get_num_threads()} torch threads; data: {info.source}")
    print(f"config: batch {config.train.batch_size}, replicas {replicas}, "
          f"{config.model.max_steps} steps, LSTM {config.model.lstm_size}, "
          f"MLP {config.model.mlp_depth}x{config.model.mlp_width}")
    print(f"matmul floor: {side}x{side} float32 matmul at {rate / 1e9:.1f} GFLOP/s")
    print(f"{'phase':<9} {'median ms':>9} {'GFLOP':>7} {'floor ms':>8} {'ratio':>6}")
    for name, s in seconds.items():
        ratio = f"{s * rate / flops[name]:5.2f}x" if flops[name] else "     -"
        print(f"{name:<9} {s * 1e3:9.1f} {flops[name] / 1e9:7.3f} "
              f"{flops[name] / rate * 1e3:8.1f} {ratio}")
    print(f"ratio step / floor: {seconds['step'] * rate / flops['step']:.2f}x (target <= 2x; "
          f"median of {repeats} steps, each phase's median on its own row)")


if __name__ == "__main__":
    main()
