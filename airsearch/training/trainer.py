"""Train one configuration on several seeds at once, as vectorized replicas, and label each seed.

Reads like a script: load data -> build R replicas -> loop (sample batch and noise per
replica, loss, per-replica guard, step) -> evaluate every train.eval_every steps, and save a
checkpoint a killed run resumes from (airsearch.training.checkpoint) -> summary.
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

from airsearch.atomic import atomic_write
from airsearch.config import AIRConfig
from airsearch.data import MultiMNIST, load_datasets
from airsearch.model.air import AIR, LossTerms, Noise
from airsearch.model.schedules import z_pres_prior_logit
from airsearch.model.spatial import box_pixels
from airsearch.training import outcomes
from airsearch.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    Progress,
    check_fresh_folder,
    check_resumable,
    save_checkpoint,
    schedule_change,
    trim_metrics,
)
from airsearch.training.evaluate import Evaluation, deterministic_inference, evaluate
from airsearch.training.figures import (
    attention_figure,
    confusion_figure,
    reconstruction_figure,
)
from airsearch.training.gradient_variance import gradient_variance
from airsearch.training.localisation import Localisation, localise
from airsearch.training.optim import (
    ReplicaGuard,
    build_optimizer,
    describe_groups,
    learning_rate_factor,
    set_learning_rates,
)
from airsearch.training.records import EvalRecord, RunSummary, SeedRecord, rate_of

DATA_STREAM, NOISE_STREAM = 1, 2  # per-seed generator streams, apart from the init stream
FIGURE_IMAGES = 8
GRAD_VAR_SAMPLES = 8  # gradient estimates per logged diag/grad_var_* (a cheap, noisy number)


def train_seeds(config: AIRConfig, seeds: Sequence[int], *, out_dir: Path | None = None,
                on_eval: Callable[[EvalRecord], None] | None = None, device: str = "cpu",
                progress: bool = True, chunk_size: int | None = None,
                mnist_dir: str | None = None, resume: Checkpoint | None = None) -> RunSummary:
    """Train `seeds` of `config`; a seed that diverges is labelled, never raised.

    With `resume`, the checkpoint of this run in out_dir, the run goes on where it stopped.
    """
    config.validate()
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    if resume is not None:
        check_resumable(resume, config, seeds)
    elif out_dir is not None:
        check_fresh_folder(Path(out_dir))
    start = time.perf_counter() - (resume.wall_s if resume is not None else 0.0)
    train, heldout, data_info = load_datasets(config.data, mnist_dir=mnist_dir)
    if resume is not None and resume.data != data_info.to_dict():
        raise CheckpointError(f"the run trained on {resume.data['source']}, this machine "
                              f"offers {data_info.source}: point --mnist-dir at the same "
                              "digits to resume it")
    change = schedule_change(resume, config) if resume is not None else None
    if change and progress:  # accepted, but not the run a fresh start would train
        tqdm.write(f"note: {change}; the run goes on at the rates of a "
                   f"{config.train.steps}-step run")
    torch_device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    run = _Run(config, seeds, train, heldout, torch_device, out, on_eval, progress, start,
               data_info.to_dict())
    chunks: list[tuple[list[int], Checkpoint | None]] = []
    todo = seeds
    if resume is not None:
        run.finished = [SeedRecord(**fields) for fields in resume.finished]
        if out is not None:
            trim_metrics(out, resume)
        chunks.append((resume.seeds, resume))
        begun = {result.seed for result in run.finished} | set(resume.seeds)
        todo = [s for s in seeds if s not in begun]
    size = chunk_size or replicas_that_fit(config, torch_device)
    chunks += [(todo[first:first + size], None) for first in range(0, len(todo), size)]
    for chunk_seeds, checkpoint in chunks:
        run.finished += _train_replicas(run, chunk_seeds, checkpoint)
    return _summary(config, run.data_info, run.finished, time.perf_counter() - start,
                    "finished", out)


@dataclass
class _Run:
    """What every chunk of replicas of one run shares."""

    config: AIRConfig
    seeds: list[int]
    train: MultiMNIST
    heldout: MultiMNIST
    device: torch.device
    out: Path | None
    on_eval: Callable[[EvalRecord], None] | None
    show_progress: bool
    start: float  # perf_counter at the start; a resumed run's is earlier by its recorded seconds
    data_info: dict[str, Any]
    finished: list[SeedRecord] = field(default_factory=list)  # the chunks done so far


def replicas_that_fit(config: AIRConfig, device: torch.device) -> int:
    """How many replicas to train at once, from a rough per-replica memory estimate.

    Memory grows linearly in R: parameters and Adam state (about 16 bytes per parameter) plus
    activations kept for the backward pass, dominated by the K written canvases and the
    intermediate images of writing them (about 40 bytes per canvas pixel, per image and step).
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

    def state_dict(self) -> dict[str, Any]:
        """Everything that moves during training: weights, optimiser, guard, generators."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "active": self.guard.active.clone(),
                "data_gens": [g.get_state() for g in self.data_gens],
                "noise_gens": [g.get_state() for g in self.noise_gens]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.guard.load_active(state["active"])
        for gens, saved in ((self.data_gens, state["data_gens"]),
                            (self.noise_gens, state["noise_gens"])):
            for gen, gen_state in zip(gens, saved, strict=True):
                gen.set_state(gen_state)

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
        """Gradients of the active replicas' summed losses (a frozen replica's loss is left out).

        Gradients are dropped, not zeroed, before: backward then writes each one once instead
        of zero-filling it and adding into it. Every parameter gets a gradient at every step,
        so the training is bitwise the same, 4-7% faster per step on a 2-core CPU.
        """
        active = self.guard.active.to(losses.device)
        self.optimizer.zero_grad(set_to_none=True)
        torch.where(active, losses, torch.zeros_like(losses)).sum().backward()

    def update(self, step: int, losses: torch.Tensor) -> torch.Tensor:
        """Guard (clip, freeze the newly diverged), then the optimiser step; returns that mask."""
        set_learning_rates(self.optimizer, self.config.train, step)
        newly = self.guard.before_step(losses)
        self.optimizer.step()
        self.guard.after_step()
        return newly


def _train_replicas(run: _Run, seeds: list[int], resume: Checkpoint | None) -> list[SeedRecord]:
    config, out = run.config, run.out
    tc, R = config.train, len(seeds)
    trainer = ReplicaStep(config, seeds, torch.from_numpy(run.train.images).to(run.device))
    model = trainer.model
    progress = Progress.fresh(R)
    if resume is not None:
        trainer.load_state_dict(resume.state)
        progress = resume.progress
    grad_var_every = config.eval.gradient_variance_every
    mean_true = float(run.heldout.counts.mean())
    elbo_sum, elbo_steps = torch.zeros(R, dtype=torch.float64), 0
    last_eval: Evaluation | None = None
    located: Localisation | None = None
    bar = tqdm(total=tc.steps, initial=progress.step, disable=not run.show_progress,
               dynamic_ncols=True,
               desc=f"seeds {seeds[0]}..{seeds[-1]}" if R > 1 else f"seed {seeds[0]}")
    if run.show_progress:
        tqdm.write(f"data: {run.data_info['source']}; optimiser groups: "
                   f"{describe_groups(trainer.optimizer)}"
                   + (f"; resumed at step {progress.step}" if resume is not None else ""))

    for step in range(progress.step + 1, tc.steps + 1):
        elbo, newly = trainer(step - 1)
        for r in torch.nonzero(newly).flatten().tolist():
            progress.diverged_at[r] = step
            tqdm.write(f"seed {seeds[r]}: non-finite loss or gradient at step {step}; "
                       "frozen and labelled diverged")
        elbo_sum += torch.nan_to_num(elbo.cpu().to(torch.float64))
        elbo_steps += 1
        bar.update(1)

        if step % tc.eval_every == 0 or step == tc.steps:
            last_eval, located = _evaluate(run, model, seeds, step)
            grad_var = None
            if grad_var_every and step % grad_var_every == 0:
                batch = (torch.from_numpy(run.heldout.images[:tc.batch_size])
                         .to(run.device, torch.float32) / 255.0)
                grad_var = gradient_variance(model, batch.expand(R, *batch.shape),
                                             z_pres_prior_logit(config.prior.z_pres, step),
                                             step, seeds, GRAD_VAR_SAMPLES)
            wall = time.perf_counter() - run.start
            lr_multiplier = learning_rate_factor(tc, step - 1)  # of the last step trained
            per_seed = []
            for r, seed in enumerate(seeds):
                metrics = {"seed": seed, **last_eval.metrics(r), **located.metrics(r),
                           **(grad_var.metrics(r) if grad_var is not None else {}),
                           "train/elbo": float(elbo_sum[r] / elbo_steps),
                           "train/lr_multiplier": lr_multiplier,
                           "diverged": float(progress.diverged_at[r] is not None)}
                per_seed.append(metrics)
                progress.histories[r].append({"step": step, "wall_s": wall, **metrics})
                if (progress.converged_at[r] is None and progress.diverged_at[r] is None
                        and outcomes.converged(_accuracies(progress.histories[r]),
                                               config.eval.threshold, config.eval.hold)):
                    progress.converged_at[r] = (step, wall)
            progress.step = step
            elbo_sum.zero_()
            elbo_steps = 0
            record = EvalRecord(step, wall, per_seed)
            if out is not None:
                _append_metrics(out, record)
                save_checkpoint(out, Checkpoint(
                    config=config.to_flat(), all_seeds=run.seeds, data=run.data_info,
                    finished=[asdict(result) for result in run.finished], seeds=seeds,
                    wall_s=wall, progress=progress, state=trainer.state_dict()))
            if run.on_eval is not None:
                run.on_eval(record)
            bar.set_postfix_str(_progress_text(per_seed, config.eval.threshold))
            if run.show_progress:
                tqdm.write(f"step {step}: " + _progress_text(per_seed, config.eval.threshold))
            if out is not None:  # a killed run keeps everything recorded so far
                partial = run.finished + _seed_results(config, seeds, last_eval, progress,
                                                       mean_true, None)
                _summary(config, run.data_info, partial, wall, "running", out)
    bar.close()
    if last_eval is None and progress.step > 0:  # resumed after its last step: same weights
        last_eval, located = _evaluate(run, model, seeds, progress.step)
    figures = _figures(model, run.heldout, seeds, out) if out is not None else [None] * R
    if out is not None and located is not None:  # the final evaluation saw these weights
        for r, seed in enumerate(seeds):
            attention_figure(located.centres[r].numpy(), located.present[r].numpy(),
                             model.canvas, f"seed {seed}: where each step attends (held-out)",
                             out / f"seed_{seed}" / "attention.png")
            confusion_figure([last_eval.confusion[r].tolist()],
                             [f"seed {seed}: counts on held-out images"],
                             out / f"seed_{seed}" / "confusion.png")
    return _seed_results(config, seeds, last_eval, progress, mean_true, figures)


def _evaluate(run: _Run, model: AIR, seeds: list[int], step: int
              ) -> tuple[Evaluation, Localisation]:
    """Held-out count accuracy and localisation at `step` (deterministic: no sampling)."""
    counts = torch.from_numpy(run.heldout.counts)
    evaluation = evaluate(model, torch.from_numpy(run.heldout.images), counts, seeds,
                          z_pres_prior_logit(run.config.prior.z_pres, step))
    return evaluation, localise(evaluation.boxes, evaluation.present,
                                torch.from_numpy(run.heldout.boxes), counts, model.canvas)


def _accuracies(history: list[dict[str, float]]) -> list[float]:
    return [row["eval/count_accuracy"] for row in history]


def _seed_results(config: AIRConfig, seeds: list[int], last: Evaluation | None,
                  progress: Progress, mean_true: float, figures: list[str | None] | None
                  ) -> list[SeedRecord]:
    results = []
    for r, seed in enumerate(seeds):
        history, diverged_at = progress.histories[r], progress.diverged_at[r]
        if last is None:  # zero training steps: nothing measured
            outcome, final, confusion = "diverged", {}, []
        else:
            outcome = outcomes.label(
                diverged=diverged_at is not None, accuracies=_accuracies(history),
                threshold=config.eval.threshold, hold=config.eval.hold,
                share_zero=float(last.share_inferred(0)[r]),
                share_max=float(last.share_inferred(config.model.max_steps)[r]),
                mean_count=float(last.mean_count[r]), mean_true=mean_true)
            final = {k: v for k, v in history[-1].items() if k not in ("step", "wall_s")}
            confusion = last.confusion[r].tolist()
        hit = progress.converged_at[r]
        results.append(SeedRecord(
            seed=seed, outcome=outcome, final=final,
            steps_to_converge=hit[0] if hit and outcome == "converged" else None,
            seconds_to_converge=hit[1] if hit and outcome == "converged" else None,
            confusion=confusion, history=history,
            figure_path=figures[r] if figures else None, diverged_at_step=diverged_at))
    return results


def _summary(config: AIRConfig, data: dict[str, Any], results: list[SeedRecord], wall: float,
             status: str, out: Path | None) -> RunSummary:
    counts = {name: 0 for name in outcomes.OUTCOMES}
    for result in results:
        counts[result.outcome] += 1
    summary = RunSummary(config=config.to_flat(), data=data, seeds=results,
                         rate=rate_of(results), outcome_counts=counts,
                         steps=config.train.steps, wall_s=wall, status=status,
                         git_commit=_git_commit())
    if out is not None:
        with atomic_write(out / "summary.json") as f:
            f.write(json.dumps(summary.to_dict(), indent=2, default=_json_default).encode())
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
