"""Per-seed training throughput with R replicas in one process, as a ratio to R = 1.

Seed-steps per second = R / step time. All figures come from one run on one machine, so the
ratios are comparable even when absolute speed varies. Targets: >= 3x at R = 8 on a 2-core
CPU, >= 20x at R = 32 on a GPU.

It also prints the ceiling the device sets: a seed-step cannot take less than its FLOPs at the
device's square-matmul speed (benchmarks/speed.py), so no R can beat R = 1 by more
than R = 1's step time over that floor.

    python benchmarks/replicas.py [--device cuda] [--replicas 1,2,4,8,16,32] [--repeats N]
"""

from __future__ import annotations

import click
import torch
from speed import matmul_floor, median_seconds, phase_flops

from airsearch.config import AIRConfig, parse_assignments
from airsearch.data import load_datasets
from airsearch.training.step import ReplicaStep


@click.command()
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE")
@click.option("--device", default="cpu", show_default=True)
@click.option("--replicas", "counts", default=None, help="Comma-separated R values "
              "(default 1,2,4,8 on CPU; 1,2,4,8,16,32,64 on a GPU).")
@click.option("--repeats", default=15, show_default=True)
def main(assignments: tuple[str, ...], device: str, counts: str | None, repeats: int) -> None:
    config = AIRConfig.from_flat({"data.train_images": 2048, **parse_assignments(assignments)})
    train, _, _ = load_datasets(config.data)
    images = torch.from_numpy(train.images).to(device)
    default = "1,2,4,8" if device == "cpu" else "1,2,4,8,16,32,64"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    print(f"device {device}, {torch.get_num_threads()} torch threads, batch "
          f"{config.train.batch_size} per replica")
    base, ceiling = None, None
    for replicas in [int(r) for r in (counts or default).split(",")]:
        step = ReplicaStep(config, list(range(replicas)), images)
        index = iter(range(10**9))

        def timed_step() -> None:
            step(next(index))  # noqa: B023 (used at once)
            sync()

        seconds = median_seconds(timed_step, repeats)
        throughput = replicas / seconds
        if base is None:
            base = throughput
            floor_s, _ = matmul_floor(sum(phase_flops(step, 0).values()), repeats, device)
            ceiling = seconds / floor_s
        print(f"R={replicas:3d}: step {seconds * 1e3:8.1f} ms, {throughput:7.1f} seed-steps/s, "
              f"{throughput / base:5.2f}x R=1")
    print(f"ceiling on this device: {ceiling:.2f}x R=1 (R=1's step over the matmul floor of "
          f"its FLOPs)")


if __name__ == "__main__":
    main()
