"""Measuring a training step against the machine's matmul speed (used by benchmarks/).

The yardstick is a square float32 matmul: the fastest work a device does, so a step's time
over the time of a matmul with the step's FLOPs says how much of the step is overhead.
FLOPs are counted by torch's FlopCounterMode (matmuls only: elementwise work is the overhead
being measured). A CPU is measured two ways: all its threads on one step, and one
single-threaded step per core side by side, each against a single-threaded matmul.
The step's own matmuls, recorded and replayed alone at their shapes, split the gap: what the
shapes cost against the square matmul, and what everything else in the step costs.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from airsearch.config import AIRConfig
from airsearch.data import load_datasets
from airsearch.training.step import ReplicaStep

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


@dataclass(frozen=True)
class TensorLayout:
    """A matmul operand as the kernel sees it: shape, strides (a transpose stays one), device."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    device: torch.device

    def random(self) -> torch.Tensor:
        # Over a storage of the span the strides reach, so expanded operands stay expanded.
        span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True) if n)
        return torch.randn(span, device=self.device).as_strided(self.shape, self.stride)


_MATMULS = {torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm,
            torch.ops.aten.baddbmm}


class MatmulRecorder(TorchDispatchMode):
    """Records every matmul torch runs (forward and backward) with its operands' layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch._ops.OpOverload, tuple[object, ...]]] = []

    def __torch_dispatch__(self, func: torch._ops.OpOverload, types: tuple[type, ...],
                           args: tuple[object, ...] = (),
                           kwargs: dict[str, object] | None = None) -> object:
        if func.overloadpacket in _MATMULS:
            if kwargs:
                raise ValueError(f"{func} with keyword arguments is not replayed: {kwargs}")
            self.calls.append((func, tuple(
                TensorLayout(tuple(a.shape), a.stride(), a.device)
                if isinstance(a, torch.Tensor) else a for a in args)))
        return func(*args, **(kwargs or {}))


def step_matmuls(step: ReplicaStep, index: int) -> Callable[[], None]:
    """Train step `index` once, recording its matmuls; returns a function that runs them alone.

    The replay gets fresh random operands of the recorded layouts, made once: it times the
    step's matmul work at the step's own shapes, with nothing else in between.
    """
    recorder = MatmulRecorder()
    with recorder:
        step(index)
    calls = [(func, tuple(a.random() if isinstance(a, TensorLayout) else a for a in args))
             for func, args in recorder.calls]

    def replay() -> None:
        for func, args in calls:
            func(*args)
    return replay


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


def interleaved_seconds(step: ReplicaStep, references: dict[str, Callable[[], object]],
                        repeats: int, block: int = 5, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each phase, of the whole step and of each reference, `repeats` each.

    Steps and references (the square matmul, the step's matmuls alone) alternate in blocks,
    so all see the same machine: a shared CPU's speed drifts by tens of percent within
    minutes, which would skew a ratio of two figures measured one after the other.
    """
    times: dict[str, list[float]] = {"forward": [], "backward": [], "update": [], "step": [],
                                     **{name: [] for name in references}}
    for _ in range(warmup):
        step(0)
        for reference in references.values():
            reference()
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
        for name, reference in references.items():
            for _ in range(block):
                t0 = time.perf_counter()
                reference()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


@dataclass
class StepTiming:
    """One process's measurement: median seconds and FLOPs per phase, and its matmul speed."""

    threads: int
    seconds: dict[str, float]  # forward, backward, update, step, matmuls (the step's, alone)
    flops: dict[str, float]
    matmul_rate: float  # FLOP/s of the square matmul, timed alternately with the steps
    data_source: str

    def ratio(self, phase: str = "step") -> float:
        """The phase's time over the time its FLOPs take at the matmul's speed."""
        return self.seconds[phase] * self.matmul_rate / self.flops[phase]


def time_step(config: AIRConfig, replicas: int, repeats: int,
              start: Callable[[], object] = lambda: None) -> StepTiming:
    """Count and time training steps of `config` against a square matmul on this process's
    threads; `start` is called once everything is built, just before the timing."""
    train, _, info = load_datasets(config.data)
    step = ReplicaStep(config, list(range(replicas)), torch.from_numpy(train.images))
    flops = phase_flops(step, 0)
    flops["step"] = flops["matmuls"] = sum(flops.values())
    matmul, side = square_matmul(flops["step"])
    matmuls = step_matmuls(step, 0)
    start()
    seconds = interleaved_seconds(step, {"matmul": matmul, "matmuls": matmuls}, repeats)
    rate = 2 * side ** 3 / seconds.pop("matmul")
    return StepTiming(torch.get_num_threads(), seconds, flops, rate, info.source)


def time_steps_side_by_side(config: AIRConfig, replicas: int, repeats: int,
                            processes: int) -> list[StepTiming]:
    """`time_step` in `processes` single-threaded processes at once, timed together.

    How studies use a CPU (trials of one CPU each, side by side): each core trains its own
    step and is measured against its own matmul, under the load of the others.
    """
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_single_threaded, args=(config, replicas, repeats,
                                                               barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    timings: list[StepTiming] = []
    while len(timings) < processes:
        try:
            timings.append(results.get(timeout=1.0))
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                for worker in workers:  # the others wait at the barrier for it
                    worker.terminate()
                raise RuntimeError("a timing process failed (its error is printed above)") from None
    for worker in workers:
        worker.join()
    return timings


def _single_threaded(config: AIRConfig, replicas: int, repeats: int, barrier: object,
                     results: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "full MNIST not found")  # the parent reports the source
    results.put(time_step(config, replicas, repeats, start=barrier.wait))
