"""Checkpoints: everything a killed run needs to go on as if it had never stopped.

Written atomically at every evaluation, with a SHA-256 of its contents that loading checks:
damage inside a file of the right size is found, not resumed. Besides the weights it holds
the optimiser's moments, which replicas the guard froze, every replica's data and noise
generator state and the loop's record (evaluations, when each seed converged or diverged,
wall seconds so far), so a resumed run takes bitwise the steps the uninterrupted run would
have taken. The seeds of a run split into chunks are trained one chunk after another; the
checkpoint holds the chunk in training and the results of the chunks already finished (and
of the seeds that a verdict took out).

A fresh run never writes into a folder that holds another run: its metrics would be appended
to the other's, and a checkpoint worth resuming overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from airsearch.atomic import atomic_write
from airsearch.config import AIRConfig
from airsearch.schedules import learning_rate_factor

CHECKPOINT = "checkpoint.pt"
RUN_FILES = ("summary.json", "metrics.jsonl", CHECKPOINT)  # and a seed_<s>/ folder per seed
FORMAT = 2  # raised whenever a field changes meaning, so an old file is refused, not misread


class CheckpointError(ValueError):
    """A run cannot be resumed from this checkpoint; the message says why."""


class UnreadableCheckpoint(CheckpointError):
    """The checkpoint file exists but cannot be loaded (truncated, garbled)."""


@dataclass
class Progress:
    """The training loop's record of one chunk of replicas, as of `step`."""

    step: int
    histories: list[list[dict[str, float]]]  # per replica: one row per evaluation
    converged_at: list[tuple[int, float] | None]  # (step, wall seconds) the rule first held
    diverged_at: list[int | None]

    @classmethod
    def fresh(cls, replicas: int) -> Progress:
        return cls(0, [[] for _ in range(replicas)], [None] * replicas, [None] * replicas)

    def subset(self, keep: list[int]) -> Progress:
        """The record of the replicas at positions `keep` (the others left the batch)."""
        return Progress(self.step, [self.histories[r] for r in keep],
                        [self.converged_at[r] for r in keep], [self.diverged_at[r] for r in keep])


@dataclass
class Checkpoint:
    config: dict[str, Any]        # flat config of the run
    all_seeds: list[int]          # every seed of the run, in order
    data: dict[str, Any]          # the data source the run trained on
    finished: list[dict[str, Any]]  # SeedRecord fields of the chunks already done
    seeds: list[int]              # the chunk in training
    wall_s: float                 # training seconds so far (time while stopped not counted)
    progress: Progress
    state: dict[str, Any]         # ReplicaStep.state_dict(): weights, optimiser, generators

    @property
    def step(self) -> int:
        return self.progress.step


def check_resumable(checkpoint: Checkpoint, config: AIRConfig, seeds: Sequence[int]) -> None:
    """Resuming continues the same run: same seeds, same config; only train.steps may
    change, and not to fewer steps than were trained."""
    if checkpoint.all_seeds != list(seeds):
        raise CheckpointError(f"the checkpoint trains seeds {checkpoint.all_seeds}, "
                              f"not {list(seeds)}")
    flat = config.to_flat()
    changed = sorted(key for key in flat if key != "train.steps"
                     and flat[key] != checkpoint.config.get(key))
    if changed:
        raise CheckpointError(f"config keys differ from the checkpoint's: {', '.join(changed)}; "
                              "a resumed run keeps its config (only train.steps may change)")
    if config.train.steps < checkpoint.step:
        raise CheckpointError(f"train.steps ({config.train.steps}) is below the checkpoint's "
                              f"step ({checkpoint.step})")
    if checkpoint.finished and config.train.steps != checkpoint.config["train.steps"]:
        raise CheckpointError("this run trained its seeds in several chunks, and the finished "
                              "chunks cannot train on: resume it with its own train.steps "
                              f"({checkpoint.config['train.steps']})")


def schedule_change(checkpoint: Checkpoint, config: AIRConfig) -> str | None:
    """What a new train.steps changes in the learning rates of the steps already trained.

    The decay is set in fractions of train.steps, so a run resumed with more steps may have
    trained some of its steps at other rates than a run started with them: None if it did not.
    """
    before = AIRConfig.from_flat(checkpoint.config).train
    if before.steps == config.train.steps:
        return None
    for step in range(checkpoint.step):
        old, new = learning_rate_factor(before, step), learning_rate_factor(config.train, step)
        if old != new:
            return (f"with train.steps {config.train.steps} instead of {before.steps}, the "
                    f"learning rates of the steps trained differ from step {step} on "
                    f"(multiplier {new:.3g} there, trained at {old:.3g})")
    return None


def save_checkpoint(out: Path, checkpoint: Checkpoint) -> None:
    """Write OUT/checkpoint.pt through a temporary file, so a kill never leaves half a file.

    The file holds the serialised checkpoint as a byte tensor beside its SHA-256
    (`read_checkpoint_file` checks it); `model`, `seeds`, `step` and `config` sit at the top
    level of the serialised dict for readers that only want the weights (`diagnose
    gradients --checkpoint`).
    """
    c = checkpoint  # fields one by one: asdict would deep-copy every tensor of the state
    inner = io.BytesIO()
    torch.save({"model": c.state.get("model", {}), "step": c.step, "trainer": c.state,
                "config": c.config, "all_seeds": c.all_seeds, "data": c.data,
                "finished": c.finished, "seeds": c.seeds, "wall_s": c.wall_s,
                "progress": asdict(c.progress)}, inner)
    blob = inner.getvalue()
    with atomic_write(out / CHECKPOINT) as f:
        torch.save({"format": FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
                    "blob": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, f)


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """The serialised checkpoint at `path`, its checksum verified; an UnreadableCheckpoint or
    CheckpointError saying what is wrong otherwise."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(saved, dict):
            raise TypeError(f"holds a {type(saved).__name__}, not a checkpoint")
    except Exception as exc:  # torch raises many kinds for a cut-off or garbled file
        raise UnreadableCheckpoint(
            f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}): it was cut off "
            "or damaged (a kill mid-write, a full disk); move it away and train afresh, or "
            "restore it from a copy") from None
    if saved.get("format") != FORMAT:
        raise CheckpointError(f"{path} was written by another version of airsearch (format "
                              f"{saved.get('format')!r}, this one reads {FORMAT}); it cannot "
                              "be resumed")
    stored = saved.get("blob")
    blob = stored.numpy().tobytes() if isinstance(stored, torch.Tensor) else b""
    if hashlib.sha256(blob).hexdigest() != saved.get("sha256"):
        raise UnreadableCheckpoint(f"{path} is damaged: its contents do not match the "
                                   "checksum written with them; move it away and train afresh, "
                                   "or restore it from a copy")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint of the run in `run_dir`, or a CheckpointError saying what is wrong."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: only a run that reached its first "
                              "evaluation (train.eval_every steps) can be resumed")
    saved = read_checkpoint_file(path)
    try:
        progress = saved["progress"]
        progress["converged_at"] = [tuple(c) if c is not None else None
                                    for c in progress["converged_at"]]
        return Checkpoint(config=saved["config"], all_seeds=saved["all_seeds"],
                          data=saved["data"], finished=saved["finished"], seeds=saved["seeds"],
                          wall_s=saved["wall_s"], progress=Progress(**progress),
                          state=saved["trainer"])
    except (KeyError, TypeError) as exc:
        raise UnreadableCheckpoint(f"{path} lacks part of a checkpoint ({exc!r}); move it away "
                                   "and train afresh") from None


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint out of the way (kept for inspection, never resumed)."""
    target = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    path.replace(target)
    return target


def trim_metrics(out: Path, checkpoint: Checkpoint) -> None:
    """Drop the rows of OUT/metrics.jsonl written after the checkpoint.

    Metrics are appended just before the checkpoint is saved, so a run killed in between has
    rows the checkpoint does not know of; the resumed run writes them again.
    """
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    finished = {int(result["seed"]) for result in checkpoint.finished}
    chunk = set(checkpoint.seeds)
    kept = [line for line in path.read_text().splitlines()
            if (row := json.loads(line))["seed"] in finished
            or (row["seed"] in chunk and row["step"] <= checkpoint.step)]
    with atomic_write(path) as f:
        f.write("".join(line + "\n" for line in kept).encode())


def check_fresh_folder(out: Path) -> None:
    """Refuse to start a run in a folder that holds one, saying how to go on."""
    if any((Path(out) / name).exists() for name in RUN_FILES):
        try:
            summary = json.loads((Path(out) / "summary.json").read_text())
            held = f"a {summary['status']} run of {summary['steps']} steps"
        except (OSError, ValueError, KeyError):
            held = "a run"
        raise CheckpointError(f"{out} already holds {held}: continue it with --resume {out}, "
                              "replace it with --overwrite, or choose another --out")


def clear_run(out: Path) -> None:
    """Delete the files of the run in `out` (nothing else in the folder)."""
    for name in RUN_FILES:
        (Path(out) / name).unlink(missing_ok=True)
    for folder in Path(out).glob("seed_*"):
        shutil.rmtree(folder)
