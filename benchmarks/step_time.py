"""One AIR training step against the matmul floor of the same FLOPs, measured in one run.

Counts the FLOPs of a full training step (forward, backward, optimiser) of the default
architecture at batch 64 with torch's FlopCounterMode, times the step, then times one square
matmul and scales it to the same FLOPs: the time the step would take if all its work ran at
this machine's matmul speed. Target on a 2-core CPU: step / floor <= 2.

The step is also split into its phases (forward, backward, update = guard and optimiser),
each timed and counted on its own: where the ratio is lost, and what no change to the
optimiser alone can recover. Steps and matmuls are timed alternately (interleaved_seconds).

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


def square_matmul(flops: float, device: str = "cpu") -> tuple[Callable[[], object], int]:
    """A square float32 matmul near `flops` (synchronised on a GPU), and its side."""
    side = max(64, round((flops / 2) ** (1 / 3)))
    a, b = torch.randn(side, side, device=device), torch.randn(side, side, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return (lambda: (a @ b, sync())), side


def matmul_floor(flops: float, repeats: int, device: str = "cpu") -> tuple[float, int]:
    """Seconds a square float32 matmul needs for `flops`, and the side it was measured at."""
    matmul, side = square_matmul(flops, device)
    return median_seconds(matmul, repeats) * flops / (2 * side ** 3), side


def phase_flops(step: ReplicaStep, index: int) -> dict[str, float]:
    """FLOPs of each phase of training step `index`, counted by torch."""
    counts = {}
    counter = FlopCounterMode(display=False)
    with counter:
        terms = step.forward(index)
    counts["forward"] = counter.get_total_flops()
    losses = terms.model_loss + terms.baseline_loss
    counter = FlopCounterMode(display=False)
    with counter:
        step.backward(losses)
    counts["backward"] = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        step.update(index, losses)
    counts["update"] = counter.get_total_flops()
    return counts


def interleaved_seconds(step: ReplicaStep, matmul: Callable[[], object], repeats: int,
                        block: int = 5, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each phase, of the whole step and of `matmul`, over `repeats` each.

    Steps and matmuls alternate in blocks, so both see the same machine: a shared CPU's
    speed drifts by tens of percent within minutes, which would skew a ratio of two
    figures measured one after the other.
    """
    times: dict[str, list[float]] = {"forward": [], "backward": [], "update": [], "step": [],
                                     "matmul": []}
    for _ in range(warmup):
        step(0)
        matmul()
    index = 1
    while len(times["step"]) < repeats:
        for _ in range(block):
            t0 = time.perf_counter()
            terms = step.forward(index)
            losses = terms.model_loss + terms.baseline_loss
            t1 = time.perf_counter()
            step.backward(losses)
            t2 = time.perf_counter()
            step.update(index, losses)
            t3 = time.perf_counter()
            for name, seconds in zip(("forward", "backward", "update", "step"),
                                     (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                times[name].append(seconds)
            index += 1
        for _ in range(block):
            t0 = time.perf_counter()
            matmul()
            times["matmul"].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


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
