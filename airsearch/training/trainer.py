"""Train one configuration on several seeds at once, as vectorized replicas, and label each seed.

Reads like a script: load data -> build R replicas -> loop (sample batch and noise per
replica, loss, per-replica guard, step) -> evaluate every train.eval_every steps -> summary.
Replica r uses only generators seeded from its own seed (init, data order, sampling noise),
so it follows the same trajectory it would follow alone.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from airsearch.config import AIRConfig
from airsearch.data import MultiMNIST, load_datasets
from airsearch.diagnostics.gradients import gradient_variance
from airsearch.model.air import AIR, LossTerms, Noise
from airsearch.model.schedules import z_pres_prior_logit
from airsearch.model.spatial import box_pixels
from airsearch.stats import Rate, wilson
from airsearch.training import outcomes
from airsearch.training.evaluate import Evaluation, deterministic_inference, evaluate
from airsearch.training.figures import attention_figure, reconstruction_figure
from airsearch.training.localisation import Localisation, localise
from airsearch.training.optim import (
    ReplicaGuard,
    build_optimizer,
    describe_groups,
    set_learning_rates,
)

DATA_STREAM, NOISE_STREAM = 1, 2  # per-seed generator streams, apart from the init stream
FIGURE_IMAGES = 8
GRAD_VAR_SAMPLES = 8  # gradient estimates per logged diag/grad_var_* (a cheap, noisy number)


@dataclass
class EvalRecord:
    """Handed to `on_eval` after every held-out evaluation."""

    step: int
    wall_s: float
    per_seed: list[dict[str, float]]


@dataclass
class SeedResult:
    seed: int
    outcome: str
    final: dict[str, float]
    steps_to_converge: int | None
    seconds_to_converge: float | None
    confusion: list[list[int]]
    history: list[dict[str, float]] = field(default_factory=list)
    figure_path: str | None = None
    diverged_at_step: int | None = None


@dataclass
class RunSummary:
    config: dict[str, Any]
    data: dict[str, Any]
    seeds: list[SeedResult]
    rate: Rate
    outcome_counts: dict[str, int]
    steps: int
    wall_s: float
    status: str = "finished"
    git_commit: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rate"] = {"k": self.rate.k, "n": self.rate.n, "value": self.rate.value,
                       "wilson_low": self.rate.low, "wilson_high": self.rate.high}
        return out


def train_seeds(config: AIRConfig, seeds: Sequence[int], *, out_dir: Path | None = None,
                on_eval: Callable[[EvalRecord], None] | None = None, device: str = "cpu",
                progress: bool = True, chunk_size: int | None = None,
                mnist_dir: str | None = None) -> RunSummary:
    """Train `seeds` of `config`; a seed that diverges is labelled, never raised."""
    config.validate()
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    start = time.perf_counter()
    train, heldout, data_info = load_datasets(config.data, mnist_dir=mnist_dir)
    torch_device = torch.device(device)
    chunk = chunk_size or replicas_that_fit(config, torch_device)
    results: list[SeedResult] = []
    out = Path(out_dir) if out_dir is not None else None
    for first in range(0, len(seeds), chunk):
        chunk_seeds = seeds[first:first + chunk]
        results += _train_replicas(config, chunk_seeds, train, heldout, torch_device, out,
                                   on_eval, progress, start, data_info.to_dict(), results)
    return _summary(config, data_info.to_dict(), results, time.perf_counter() - start,
                    "finished", out)


def replicas_that_fit(config: AIRConfig, device: torch.device) -> int:
    """How many replicas to train at once, from a rough per-replica memory estimate.

    Memory grows linearly in R: parameters and Adam state (about 16 bytes per parameter) plus
    activations kept for the backward pass, dominated by the K written canvases and their
    sampling grids (about 40 bytes per canvas pixel, per image and step).
    """
    m, d = config.model, config.data
    params = (d.canvas_size ** 2 * (m.mlp_width + config.estimator.baseline_width)
              + 4 * (m.mlp_width + m.z_what_size + 3 + m.lstm_size) * m.lstm_size
              + 2 * m.glimpse_size ** 2 * m.mlp_width + 8 * m.mlp_width ** 2)
    samples = config.train.batch_size * config.estimator.particles
    activations = samples * m.max_steps * d.canvas_size ** 2 * 40
    per_replica = 16 * params + activations
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, int(0.5 * free // per_replica))


class ReplicaStep:
    """One optimisation step of R replicas: batch and noise per replica, loss, guard, update.

    Shared by the training loop and the benchmarks, so what is timed is what trains.
    """

    def __init__(self, config: AIRConfig, seeds: list[int], train_images: torch.Tensor) -> None:
        self.config, self.seeds = config, seeds
        device = train_images.device
        self.train_images = train_images  # (N, H, W) uint8 on the training device
        self.model = AIR(config, seeds).to(device)
        self.optimizer = build_optimizer(self.model, config.train)
        self.guard = ReplicaGuard(self.model, config.train.grad_clip)
        self.data_gens = [torch.Generator(device=device).manual_seed(s * 1000 + DATA_STREAM)
                          for s in seeds]
        self.noise_gens = [torch.Generator(device=device).manual_seed(s * 1000 + NOISE_STREAM)
                           for s in seeds]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train step `step` (0-based); returns (mean ELBO per replica, newly diverged mask)."""
        terms = self.forward(step)
        losses = terms.total
        self.backward(losses)
        return terms.elbo.mean(1).detach(), self.update(step, losses)

    # Three phases as separate methods, so airsearch.training.speed can time each one.
    def forward(self, step: int) -> LossTerms:
        """Sample each replica's batch and noise, infer, and compute the loss terms."""
        config, device = self.config, self.train_images.device
        B = config.train.batch_size
        prior_logit = z_pres_prior_logit(config.prior.z_pres, step)
        index = torch.stack([torch.randint(len(self.train_images), (B,), generator=g,
                                           device=device) for g in self.data_gens])  # (R, B)
        x = self.train_images[index].to(torch.float32).div_(255.0)  # (R, B, H, W)
        # (R, S*B, H, W): particle s of image b at s*B + b (estimator.particles)
        if config.estimator.particles > 1:
            x = x.repeat(1, config.estimator.particles, 1, 1)
        noise = Noise.draw(self.noise_gens, x.shape[1], config.model.max_steps,
                           config.model.z_what_size, device)
        return self.model.loss_terms(x, self.model.infer(x, noise), prior_logit, step)

    def backward(self, losses: torch.Tensor) -> None:
        """Gradients of the active replicas' summed losses (a frozen replica's loss is left out)."""
        active = self.guard.active.to(losses.device)
        self.optimizer.zero_grad(set_to_none=False)
        torch.where(active, losses, torch.zeros_like(losses)).sum().backward()

    def update(self, step: int, losses: torch.Tensor) -> torch.Tensor:
        """Guard (clip, freeze the newly diverged), then the optimiser step; returns that mask."""
        set_learning_rates(self.optimizer, self.config.train, step)
        newly = self.guard.before_step(losses)
        self.optimizer.step()
        self.guard.after_step()
        return newly


def _train_replicas(config: AIRConfig, seeds: list[int], train: MultiMNIST, heldout: MultiMNIST,
                    device: torch.device, out: Path | None,
                    on_eval: Callable[[EvalRecord], None] | None, progress: bool,
                    start: float, data_info: dict[str, Any], done: list[SeedResult]
                    ) -> list[SeedResult]:
    tc, R = config.train, len(seeds)
    trainer = ReplicaStep(config, seeds, torch.from_numpy(train.images).to(device))
    model = trainer.model
    heldout_images = torch.from_numpy(heldout.images)
    heldout_counts = torch.from_numpy(heldout.counts)
    heldout_boxes = torch.from_numpy(heldout.boxes)
    grad_var_every = config.eval.gradient_variance_every
    mean_true = float(heldout.counts.mean())

    histories: list[list[dict[str, float]]] = [[] for _ in seeds]
    accuracies: list[list[float]] = [[] for _ in seeds]
    converged_at: list[tuple[int, float] | None] = [None] * R
    diverged_at: list[int | None] = [None] * R
    elbo_sum, elbo_steps = torch.zeros(R, dtype=torch.float64), 0
    last_eval: Evaluation | None = None
    located: Localisation | None = None
    bar = tqdm(total=tc.steps, disable=not progress, dynamic_ncols=True,
               desc=f"seeds {seeds[0]}..{seeds[-1]}" if R > 1 else f"seed {seeds[0]}")
    if progress:
        tqdm.write(f"data: {data_info['source']}; optimiser groups: "
                   f"{describe_groups(trainer.optimizer)}")

    for step in range(1, tc.steps + 1):
        elbo, newly = trainer(step - 1)
        for r in torch.nonzero(newly).flatten().tolist():
            diverged_at[r] = step
            tqdm.write(f"seed {seeds[r]}: non-finite loss or gradient at step {step}; "
                       "frozen and labelled diverged")
        elbo_sum += torch.nan_to_num(elbo.cpu().to(torch.float64))
        elbo_steps += 1
        bar.update(1)

        if step % tc.eval_every == 0 or step == tc.steps:
            prior_logit = z_pres_prior_logit(config.prior.z_pres, step)
            last_eval = evaluate(model, heldout_images, heldout_counts, seeds, prior_logit)
            located = localise(last_eval.boxes, last_eval.present, heldout_boxes,
                               heldout_counts, model.canvas)
            grad_var = None
            if grad_var_every and step % grad_var_every == 0:
                batch = heldout_images[:tc.batch_size].to(device, torch.float32) / 255.0
                grad_var = gradient_variance(model, batch.expand(R, *batch.shape), prior_logit,
                                             step, seeds, GRAD_VAR_SAMPLES)
            wall = time.perf_counter() - start
            per_seed = []
            for r, seed in enumerate(seeds):
                metrics = {"seed": seed, **last_eval.metrics(r), **located.metrics(r),
                           **(grad_var.metrics(r) if grad_var is not None else {}),
                           "train/elbo": float(elbo_sum[r] / elbo_steps),
                           "diverged": float(diverged_at[r] is not None)}
                per_seed.append(metrics)
                histories[r].append({"step": step, "wall_s": wall, **metrics})
                accuracies[r].append(metrics["eval/count_accuracy"])
                if (converged_at[r] is None and diverged_at[r] is None
                        and outcomes.converged(accuracies[r], config.eval.threshold,
                                               config.eval.hold)):
                    converged_at[r] = (step, wall)
            elbo_sum.zero_()
            elbo_steps = 0
            record = EvalRecord(step, wall, per_seed)
            if out is not None:
                _append_metrics(out, record)
                _save_checkpoint(out, model, seeds, step, config)
            if on_eval is not None:
                on_eval(record)
            bar.set_postfix_str(_progress_text(per_seed, config.eval.threshold))
            if progress:
                tqdm.write(f"step {step}: " + _progress_text(per_seed, config.eval.threshold))
            if out is not None:  # a killed run keeps everything recorded so far
                partial = done + _seed_results(config, seeds, last_eval, histories, accuracies,
                                               converged_at, diverged_at, mean_true, None)
                _summary(config, data_info, partial, wall, "running", out)
    bar.close()
    figures = _figures(model, heldout, seeds, out) if out is not None else [None] * R
    if out is not None and located is not None:  # the final evaluation saw these weights
        for r, seed in enumerate(seeds):
            attention_figure(located.centres[r].numpy(), located.present[r].numpy(),
                             model.canvas, f"seed {seed}: where each step attends (held-out)",
                             out / f"seed_{seed}" / "attention.png")
    return _seed_results(config, seeds, last_eval, histories, accuracies, converged_at,
                         diverged_at, mean_true, figures)


def _seed_results(config: AIRConfig, seeds: list[int], last: Evaluation | None,
                  histories: list[list[dict[str, float]]], accuracies: list[list[float]],
                  converged_at: list[tuple[int, float] | None], diverged_at: list[int | None],
                  mean_true: float, figures: list[str | None] | None) -> list[SeedResult]:
    results = []
    for r, seed in enumerate(seeds):
        if last is None:  # zero training steps: nothing measured
            outcome, final, confusion = "diverged", {}, []
        else:
            outcome = outcomes.label(
                diverged=diverged_at[r] is not None, accuracies=accuracies[r],
                threshold=config.eval.threshold, hold=config.eval.hold,
                share_zero=float(last.share_inferred(0)[r]),
                share_max=float(last.share_inferred(config.model.max_steps)[r]),
                mean_count=float(last.mean_count[r]), mean_true=mean_true)
            final = {k: v for k, v in histories[r][-1].items() if k not in ("step", "wall_s")}
            confusion = last.confusion[r].tolist()
        hit = converged_at[r]
        results.append(SeedResult(
            seed=seed, outcome=outcome, final=final,
            steps_to_converge=hit[0] if hit and outcome == "converged" else None,
            seconds_to_converge=hit[1] if hit and outcome == "converged" else None,
            confusion=confusion, history=histories[r],
            figure_path=figures[r] if figures else None, diverged_at_step=diverged_at[r]))
    return results


def _summary(config: AIRConfig, data: dict[str, Any], results: list[SeedResult], wall: float,
             status: str, out: Path | None) -> RunSummary:
    counts = {name: 0 for name in outcomes.OUTCOMES}
    for result in results:
        counts[result.outcome] += 1
    summary = RunSummary(config=config.to_flat(), data=data, seeds=results,
                         rate=wilson(counts["converged"], len(results)), outcome_counts=counts,
                         steps=config.train.steps, wall_s=wall, status=status,
                         git_commit=_git_commit())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary.to_dict(), indent=2, default=_json_default))
        os.replace(tmp, out / "summary.json")
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _progress_text(per_seed: list[dict[str, float]], threshold: float) -> str:
    acc = [m["eval/count_accuracy"] for m in per_seed]
    ok = sum(a >= threshold and not m["diverged"] for a, m in zip(acc, per_seed, strict=True))
    elbo = np.mean([m["train/elbo"] for m in per_seed])
    shown = " ".join(f"{a:.2f}" for a in acc[:8]) + (" ..." if len(acc) > 8 else "")
    return f"acc {shown} | >= {threshold:g}: {ok}/{len(acc)} | train elbo {elbo:.1f}"


def _append_metrics(out: Path, record: EvalRecord) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        for metrics in record.per_seed:
            f.write(json.dumps({"step": record.step, "wall_s": record.wall_s, **metrics}) + "\n")


def _save_checkpoint(out: Path, model: AIR, seeds: list[int], step: int,
                     config: AIRConfig) -> None:
    tmp = out / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "seeds": seeds, "step": step,
                "config": config.to_flat()}, tmp)
    os.replace(tmp, out / "checkpoint.pt")


@torch.no_grad()
def _figures(model: AIR, heldout: MultiMNIST, seeds: list[int], out: Path) -> list[str | None]:
    device = next(model.parameters()).device
    images = torch.from_numpy(heldout.images[:FIGURE_IMAGES]).to(device, torch.float32) / 255.0
    x = images.unsqueeze(0).expand(model.replicas, *images.shape)
    inference = deterministic_inference(model, x)
    canvas, _ = model.render(inference)
    boxes = box_pixels(inference.z_where, model.canvas)
    presence = torch.sigmoid(inference.pres_logits)
    paths: list[str | None] = []
    for r, seed in enumerate(seeds):
        if not torch.isfinite(canvas[r]).all():
            paths.append(None)
            continue
        path = reconstruction_figure(images.cpu().numpy(), canvas[r].cpu().numpy(),
                                     boxes[r].cpu().numpy(), presence[r].cpu().numpy(),
                                     f"seed {seed}", out / f"seed_{seed}" / "reconstruction.png")
        paths.append(str(path))
    return paths


@functools.cache  # summaries are rewritten at every evaluation; the commit does not change
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
