"""Train one configuration on several seeds at once, as vectorized replicas, and label each seed.

Reads like a script: load data -> build R replicas (airsearch.training.step) -> loop: one
step of every replica, and every train.eval_every steps a held-out evaluation, the metrics
rows, a checkpoint a killed run resumes from (airsearch.training.checkpoint) and the summary
so far -> figures -> one SeedRecord per seed, labelled by airsearch.evaluation.outcomes.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from airsearch.config import AIRConfig
from airsearch.data import MultiMNIST, load_datasets
from airsearch.data.multi_mnist import load_heldout_of
from airsearch.evaluation import outcomes
from airsearch.evaluation.figures import (
    attention_figure,
    confusion_figure,
    reconstruction_figure,
)
from airsearch.evaluation.gradient_variance import gradient_variance
from airsearch.evaluation.heldout import Evaluation, deterministic_inference, evaluate
from airsearch.evaluation.localisation import Localisation, localise
from airsearch.model.air import AIR
from airsearch.model.spatial import box_pixels
from airsearch.schedules import learning_rate_factor, schedule_at
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
from airsearch.training.optim import describe_groups
from airsearch.training.records import EvalRecord, RunSummary, SeedRecord, append_metrics, summarise
from airsearch.training.step import ReplicaStep, replicas_that_fit

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
    beyond = (load_heldout_of(config.data, config.eval.beyond_digits, mnist_dir)
              if config.eval.beyond_digits else None)
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
    run = _Run(config, seeds, train, heldout, beyond, torch_device, out, on_eval, progress,
               start, data_info.to_dict())
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
        if chunk_seeds:  # a checkpoint whose every seed was decided holds no chunk to train
            run.finished += _train_replicas(run, chunk_seeds, checkpoint)
    return summarise(config, run.data_info, run.in_seed_order(run.finished),
                     time.perf_counter() - start, "finished", out)


@dataclass
class _Run:
    """What every chunk of replicas of one run shares."""

    config: AIRConfig
    seeds: list[int]
    train: MultiMNIST
    heldout: MultiMNIST
    beyond: MultiMNIST | None  # held-out images past the training counts (eval.beyond_digits)
    device: torch.device
    out: Path | None
    on_eval: Callable[[EvalRecord], None] | None
    show_progress: bool
    start: float  # perf_counter at the start; a resumed run's is earlier by its recorded seconds
    data_info: dict[str, Any]
    finished: list[SeedRecord] = field(default_factory=list)  # seeds done: chunks, verdicts

    def in_seed_order(self, records: list[SeedRecord]) -> list[SeedRecord]:
        order = {seed: i for i, seed in enumerate(self.seeds)}
        return sorted(records, key=lambda record: order[record.seed])


def _train_replicas(run: _Run, seeds: list[int], resume: Checkpoint | None) -> list[SeedRecord]:
    config, tc, R = run.config, run.config.train, len(seeds)
    trainer = ReplicaStep(config, seeds, torch.from_numpy(run.train.images).to(run.device))
    progress = Progress.fresh(R)
    if resume is not None:
        trainer.load_state_dict(resume.state)
        progress = resume.progress
    elbo_sum, elbo_steps = torch.zeros(R, dtype=torch.float64), 0
    last_eval: Evaluation | None = None
    located: Localisation | None = None
    bar = tqdm(total=tc.steps, initial=progress.step, disable=not run.show_progress,
               dynamic_ncols=True, desc=_bar_label(seeds))
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
            last_eval, located = _evaluate(run, trainer.model, seeds, step)
            per_seed = _record(run, trainer, seeds, step, last_eval, located, progress,
                               elbo_sum / elbo_steps)
            elbo_steps = 0
            text = _progress_text(per_seed, config.eval.threshold)
            if step < tc.steps:
                leaving = _decided(config, progress)
                if leaving:  # judged now, with figures; the others train on without them
                    run.finished += [replace(record, stopped_at_step=step) for record in
                                     _finish(run, trainer.model, seeds, last_eval, located,
                                             progress, leaving)]
                    text += f" | decided, leaving: {_seed_list(seeds, leaving)}"
                    keep = [r for r in range(len(seeds)) if r not in leaving]
                    seeds = [seeds[r] for r in keep]
                    if keep:
                        trainer, progress = trainer.subset(keep), progress.subset(keep)
                        last_eval, located = last_eval.subset(keep), located.subset(keep)
                    bar.set_description(_bar_label(seeds))
            elbo_sum = torch.zeros(len(seeds), dtype=torch.float64)
            _save_progress(run, trainer, seeds, step, last_eval, progress,
                           record_rows=per_seed)
            bar.set_postfix_str(text)
            if run.show_progress:
                tqdm.write(f"step {step}: {text}")
            if not seeds:
                break
    bar.close()
    if not seeds:
        return []
    if last_eval is None and progress.step > 0:  # resumed after its last step: same weights
        last_eval, located = _evaluate(run, trainer.model, seeds, progress.step)
    return _finish(run, trainer.model, seeds, last_eval, located, progress,
                   list(range(len(seeds))))


def _decided(config: AIRConfig, progress: Progress) -> list[int]:
    """Positions of the replicas whose outcome the verdict rule has decided (eval.verdicts)."""
    ec = config.eval
    if not ec.verdicts:
        return []
    return [r for r, history in enumerate(progress.histories)
            if outcomes.decided(diverged=progress.diverged_at[r] is not None, history=history,
                                threshold=ec.threshold, converge_evals=ec.decide_converged,
                                collapse_evals=ec.decide_collapsed)]


def _finish(run: _Run, model: AIR, seeds: list[int], last: Evaluation | None,
            located: Localisation | None, progress: Progress, which: list[int]
            ) -> list[SeedRecord]:
    """The records of the replicas at positions `which`, with their figures."""
    figures = _draw_figures(run, model, seeds, last, located, which)
    records = _seed_records(run.config, seeds, last, progress, run.heldout, figures)
    return [records[r] for r in which]


def _seed_list(seeds: list[int], which: list[int]) -> str:
    return ", ".join(str(seeds[r]) for r in which)


def _bar_label(seeds: list[int]) -> str:
    if not seeds:
        return "every seed decided"
    return f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"


def _evaluate(run: _Run, model: AIR, seeds: list[int], step: int
              ) -> tuple[Evaluation, Localisation]:
    """Held-out count accuracy and localisation at `step` (deterministic: no sampling)."""
    counts = torch.from_numpy(run.heldout.counts)
    evaluation = evaluate(model, torch.from_numpy(run.heldout.images), counts, seeds,
                          schedule_at(run.config, step))
    return evaluation, localise(evaluation.boxes, evaluation.present,
                                torch.from_numpy(run.heldout.boxes), counts, model.canvas)


def _record(run: _Run, trainer: ReplicaStep, seeds: list[int], step: int, evaluation: Evaluation,
            located: Localisation, progress: Progress, train_elbo: torch.Tensor
            ) -> list[dict[str, float]]:
    """One evaluation into the seeds' histories and convergence. Returns each seed's metrics."""
    config, R = run.config, len(seeds)
    beyond = None
    if run.beyond is not None:  # counting past the training range: its images' accuracy
        beyond = evaluate(trainer.model, torch.from_numpy(run.beyond.images),
                          torch.from_numpy(run.beyond.counts), seeds, schedule_at(config, step))
    grad_var = None
    every = config.eval.gradient_variance_every
    if every and step % every == 0:
        batch = (torch.from_numpy(run.heldout.images[:config.train.batch_size])
                 .to(run.device, torch.float32) / 255.0)
        grad_var = gradient_variance(trainer.model, batch.expand(R, *batch.shape),
                                     schedule_at(config, step), seeds, GRAD_VAR_SAMPLES)
    wall = time.perf_counter() - run.start
    lr_multiplier = learning_rate_factor(config.train, step - 1)  # of the last step trained
    per_seed = []
    for r, seed in enumerate(seeds):
        metrics = {"seed": seed, **evaluation.metrics(r), **located.metrics(r),
                   **(grad_var.metrics(r) if grad_var is not None else {}),
                   **(beyond.per_count(r) if beyond is not None else {}),
                   "train/elbo": float(train_elbo[r]),
                   "train/lr_multiplier": lr_multiplier,
                   "diverged": float(progress.diverged_at[r] is not None)}
        per_seed.append(metrics)
        progress.histories[r].append({"step": step, "wall_s": wall, **metrics})
        if (progress.converged_at[r] is None and progress.diverged_at[r] is None
                and outcomes.converged(_accuracies(progress.histories[r]),
                                       config.eval.threshold, config.eval.hold)):
            progress.converged_at[r] = (step, wall)
    progress.step = step
    return per_seed


def _save_progress(run: _Run, trainer: ReplicaStep, seeds: list[int], step: int,
                   evaluation: Evaluation, progress: Progress,
                   record_rows: list[dict[str, float]]) -> None:
    """After an evaluation (and the verdicts it brought): metrics file, checkpoint, the
    `on_eval` listener and the summary so far, every seed begun labelled as of now."""
    config, out = run.config, run.out
    wall = time.perf_counter() - run.start
    so_far = run.in_seed_order(
        run.finished + _seed_records(config, seeds, evaluation, progress, run.heldout, None))
    record = EvalRecord(step, wall, record_rows, so_far)
    if out is not None:
        append_metrics(out, record)
        save_checkpoint(out, Checkpoint(
            config=config.to_flat(), all_seeds=run.seeds, data=run.data_info,
            finished=[asdict(result) for result in run.finished], seeds=seeds,
            wall_s=wall, progress=progress, state=trainer.state_dict() if seeds else {}))
    if run.on_eval is not None:
        run.on_eval(record)
    if out is not None:  # a killed run keeps everything recorded so far
        summarise(config, run.data_info, so_far, wall, "running", out)


def _accuracies(history: list[dict[str, float]]) -> list[float]:
    return [row[outcomes.ACCURACY] for row in history]


def _seed_records(config: AIRConfig, seeds: list[int], last: Evaluation | None,
                  progress: Progress, heldout: MultiMNIST, figures: list[str | None] | None
                  ) -> list[SeedRecord]:
    """Each seed labelled from its evaluations (airsearch.evaluation.outcomes)."""
    mean_true = float(heldout.counts.mean())
    results = []
    for r, seed in enumerate(seeds):
        history, diverged_at = progress.histories[r], progress.diverged_at[r]
        if last is None:  # zero training steps: nothing measured
            outcome, final, confusion = outcomes.DIVERGED, {}, []
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


def _progress_text(per_seed: list[dict[str, float]], threshold: float) -> str:
    acc = [m[outcomes.ACCURACY] for m in per_seed]
    ok = sum(a >= threshold and not m["diverged"] for a, m in zip(acc, per_seed, strict=True))
    elbo = np.mean([m["train/elbo"] for m in per_seed])
    shown = " ".join(f"{a:.2f}" for a in acc[:8]) + (" ..." if len(acc) > 8 else "")
    return f"acc {shown} | >= {threshold:g}: {ok}/{len(acc)} | train elbo {elbo:.1f}"


@torch.no_grad()
def _draw_figures(run: _Run, model: AIR, seeds: list[int], last: Evaluation | None,
                  located: Localisation | None, which: list[int]) -> list[str | None]:
    """The reconstruction, attention and confusion figures of the seeds at positions `which`
    in OUT/seed_<seed>/; returns every position's reconstruction path (None where not drawn
    or where a replica's canvas is not finite)."""
    paths: list[str | None] = [None] * len(seeds)
    if run.out is None:
        return paths
    device = next(model.parameters()).device
    images = (torch.from_numpy(run.heldout.images[:FIGURE_IMAGES]).to(device, torch.float32)
              / 255.0)
    x = images.unsqueeze(0).expand(model.replicas, *images.shape)
    inference = deterministic_inference(model, x)
    canvas, _ = model.render(inference)
    boxes = box_pixels(inference.z_where, model.canvas)
    presence = torch.sigmoid(inference.pres_logits)
    recipe = textwrap.shorten(run.config.label(), 110)
    for r in which:
        seed = seeds[r]
        name = f"seed {seed} ({recipe})"
        folder = run.out / f"seed_{seed}"
        if torch.isfinite(canvas[r]).all():
            paths[r] = str(reconstruction_figure(
                images.cpu().numpy(), canvas[r].cpu().numpy(), boxes[r].cpu().numpy(),
                presence[r].cpu().numpy(), name, folder / "reconstruction.png"))
        if last is not None and located is not None:  # the final evaluation saw these weights
            attention_figure(located.centres[r].numpy(), located.present[r].numpy(),
                             model.canvas, f"{name}: where each step attends (held-out)",
                             folder / "attention.png")
            confusion_figure([last.confusion[r].tolist()],
                             [textwrap.fill(f"{name}: counts on held-out images", 50)],
                             folder / "confusion.png")
    return paths
