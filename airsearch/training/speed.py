"""Measuring a training step against the machine's matmul speed (used by benchmarks/).

The yardstick is a square float32 matmul: the fastest work a device does, so a step's time
over the time of a matmul with the step's FLOPs says how much of the step is overhead.
FLOPs are counted by torch's FlopCounterMode (matmuls only: elementwise work is the overhead
being measured).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from airsearch.training.trainer import ReplicaStep

T = TypeVar("T")


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall seconds of fn() over `repeats` calls, after `warmup` untimed ones."""
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
    def counted(phase: Callable[[], T]) -> tuple[T, float]:
        counter = FlopCounterMode(display=False)
        with counter:
            result = phase()
        return result, counter.get_total_flops()

    terms, forward = counted(lambda: step.forward(index))
    losses = terms.total
    _, backward = counted(lambda: step.backward(losses))
    _, update = counted(lambda: step.update(index, losses))
    return {"forward": forward, "backward": backward, "update": update}


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
            losses = terms.total
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
