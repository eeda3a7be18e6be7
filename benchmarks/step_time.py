"""One AIR training step against the matmul floor of the same FLOPs, measured in one run.

Counts the FLOPs of a full training step (forward, backward, optimiser) of the default
architecture at batch 64 with torch's FlopCounterMode, times the step, then times one square
matmul and scales it to the same FLOPs: the time the step would take if all its work ran at
this machine's matmul speed. Target on a 2-core CPU: step / floor <= 2.

    python benchmarks/step_time.py [--set key=value ...] [--replicas R] [--repeats N]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from airsearch.config import AIRConfig, parse_assignments
from airsearch.data import load_datasets
from airsearch.training.trainer import ReplicaStep


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_floor(flops: float, repeats: int, device: str = "cpu") -> tuple[float, int]:
    """Seconds a square float32 matmul needs for `flops`, and the side it was measured at."""
    side = max(64, round((flops / 2) ** (1 / 3)))
    a, b = torch.randn(side, side, device=device), torch.randn(side, side, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    seconds = median_seconds(lambda: (a @ b, sync()), repeats)
    return seconds * flops / (2 * side ** 3), side


def step_flops(step: ReplicaStep) -> float:
    """FLOPs of one training step (forward, backward, optimiser), counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    return counter.get_total_flops()


@click.command()
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
@click.option("--replicas", default=1, show_default=True)
@click.option("--repeats", default=30, show_default=True)
def main(assignments: tuple[str, ...], replicas: int, repeats: int) -> None:
    config = AIRConfig.from_flat({"data.train_images": 2048, **parse_assignments(assignments)})
    train, _, info = load_datasets(config.data)
    step = ReplicaStep(config, list(range(replicas)), torch.from_numpy(train.images))
    flops = step_flops(step)
    index = iter(range(1, 10**9))
    step_s = median_seconds(lambda: step(next(index)), repeats)
    floor_s, side = matmul_floor(flops, repeats)
    print(f"machine: {torch.get_num_threads()} torch threads; data: {info.source}")
    print(f"config: batch {config.train.batch_size}, replicas {replicas}, "
          f"{config.model.max_steps} steps, LSTM {config.model.lstm_size}, "
          f"MLP {config.model.mlp_depth}x{config.model.mlp_width}")
    print(f"FLOPs per training step:   {flops / 1e9:.3f} GFLOP")
    print(f"step time (median of {repeats}): {step_s * 1e3:.1f} ms "
          f"({flops / step_s / 1e9:.1f} GFLOP/s)")
    print(f"matmul floor ({side}x{side} float32 matmul, {flops / floor_s / 1e9:.1f} GFLOP/s): "
          f"{floor_s * 1e3:.1f} ms")
    print(f"ratio step / floor: {step_s / floor_s:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
