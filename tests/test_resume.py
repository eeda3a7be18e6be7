"""Resuming: a run killed after a checkpoint and resumed ends bitwise where the run that was
never interrupted ends (weights, optimiser moments, metrics, outcomes)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from airsearch.atomic import atomic_write
from airsearch.config import AIRConfig
from airsearch.data import load_datasets
from airsearch.study.trial import resumable_checkpoint, trial_folder
from airsearch.training.checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    read_checkpoint_file,
)
from airsearch.training.loop import train_seeds
from airsearch.training.step import ReplicaStep
from cli import main

TINY = {"data.train_images": 256, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "estimator.baseline_width": 32, "train.batch_size": 16,
        "train.steps": 20, "train.eval_every": 5}
SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]

pytestmark = [pytest.mark.filterwarnings("ignore:full MNIST not found"),
              pytest.mark.usefixtures("private_cache")]


class Killed(Exception):
    """Stands in for a kill right after the checkpoint of one evaluation."""


def kill_at(seed: int, step: int):
    def on_eval(record):
        if record.step == step and seed in [row["seed"] for row in record.per_seed]:
            raise Killed
    return on_eval


def metrics_without_wall_time(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


@pytest.mark.parametrize("chunk_size, killed_seed", [(None, 0), (1, 1)],
                         ids=["one-chunk", "killed-in-second-chunk"])
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path, chunk_size, killed_seed):
    config = AIRConfig.from_flat(TINY)
    whole = train_seeds(config, [0, 1], out_dir=tmp_path / "whole", progress=False,
                        chunk_size=chunk_size)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train_seeds(config, [0, 1], out_dir=out, progress=False, chunk_size=chunk_size,
                    on_eval=kill_at(killed_seed, 10))
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    # Killed between appending metrics and saving the checkpoint: a row the checkpoint lacks.
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 15, "wall_s": 0.0, "seed": killed_seed}) + "\n")

    checkpoint = load_checkpoint(out)
    assert checkpoint.step == 10
    assert checkpoint.seeds == ([0, 1] if chunk_size is None else [1])
    resumed = train_seeds(config, [0, 1], out_dir=out, progress=False, chunk_size=chunk_size,
                          resume=checkpoint)

    a, b = (read_checkpoint_file(d / "checkpoint.pt") for d in (tmp_path / "whole", out))
    assert a["step"] == b["step"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    moments_a, moments_b = a["trainer"]["optimizer"]["state"], b["trainer"]["optimizer"]["state"]
    for index, state in moments_a.items():
        for name, tensor in state.items():
            assert torch.equal(tensor, moments_b[index][name]), (index, name)
    assert metrics_without_wall_time(out) == metrics_without_wall_time(tmp_path / "whole")
    for x, y in zip(whole.seeds, resumed.seeds, strict=True):
        assert (x.seed, x.outcome, x.final, x.confusion, x.steps_to_converge) == \
               (y.seed, y.outcome, y.final, y.confusion, y.steps_to_converge)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rate"]["n"] == 2
    # Wall seconds go on from the checkpoint's: the time stopped is not counted, nothing restarts.
    walls = [row["wall_s"] for row in resumed.seeds[killed_seed].history]
    assert walls == sorted(walls) and walls[2] > checkpoint.wall_s


def test_frozen_replica_stays_frozen_after_a_round_trip(tmp_path):
    """A replica that diverged before the checkpoint is still frozen after loading it, and the
    healthy one trains on exactly as without the interruption."""
    config = AIRConfig.from_flat(TINY)
    train, _, _ = load_datasets(config.data)
    images = torch.from_numpy(train.images)
    going_on = ReplicaStep(config, [0, 1], images)
    for step in range(2):
        going_on(step)
    with torch.no_grad():  # a z_what sd of 1e30: replica 1's KL overflows at the next step
        going_on.model.glimpse_encoder.out.bias[1, :, config.model.z_what_size:] = 1e30
    going_on(2)
    assert going_on.guard.active.tolist() == [True, False]
    torch.save(going_on.state_dict(), tmp_path / "state.pt")
    frozen = {name: p[1].clone() for name, p in going_on.model.named_parameters()}

    resumed = ReplicaStep(config, [0, 1], images)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    for step in range(3, 6):
        going_on(step)
        resumed(step)
    assert resumed.guard.active.tolist() == [True, False]
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, dict(going_on.model.named_parameters())[name]), name
        assert torch.equal(p[1], frozen[name]), name


def test_cli_resume_trains_a_finished_run_longer(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(main, ["train", *SETS, "--set", "train.steps=10", "--seeds", "0-1",
                                 "--out", str(out)], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    longer = runner.invoke(main, ["train", "--resume", str(out), "--steps", "15"],
                           catch_exceptions=False)
    assert longer.exit_code == 0, longer.output
    # The decay is a fraction of train.steps: the 10-step run decayed from step 7 on, a
    # 15-step run holds the full rates up to step 9.
    assert ("note: with train.steps 15 instead of 10, the learning rates of the steps trained "
            "differ from step 7 on") in longer.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 15 and summary["status"] == "finished"
    assert [[row["step"] for row in seed["history"]] for seed in summary["seeds"]] == \
           [[5, 10, 15], [5, 10, 15]]
    assert sorted((row["step"], row["seed"]) for row in metrics_without_wall_time(out)) == \
           [(step, seed) for step in (5, 10, 15) for seed in (0, 1)]


@pytest.mark.parametrize("args, needle", [
    (["--set", "train.lr=1e-3"], "drop --set"),
    (["--seed", "0"], "drop --seed"),
    (["--seeds", "0-3"], "drop --seeds"),
    (["--overwrite"], "drop --overwrite"),
    (["--steps", "5"], "train.steps (5) is below the checkpoint's step (10)"),
])
def test_cli_resume_refuses_to_change_the_run(tmp_path, args, needle):
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(main, ["train", *SETS, "--set", "train.steps=10", "--out", str(out)],
                          catch_exceptions=False)
    assert first.exit_code == 0, first.output
    before = (out / "checkpoint.pt").read_bytes()
    result = runner.invoke(main, ["train", "--resume", str(out), *args])
    assert result.exit_code != 0
    assert needle in result.output
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_needs_a_checkpoint(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert result.exit_code != 0
    assert "checkpoint.pt does not exist" in result.output


def test_changed_config_is_named(tmp_path):
    config = AIRConfig.from_flat({**TINY, "train.steps": 5})
    train_seeds(config, [0], out_dir=tmp_path, progress=False)
    checkpoint = load_checkpoint(tmp_path)
    changed = AIRConfig.from_flat({**TINY, "train.lr": 1e-3, "model.max_steps": 4})
    with pytest.raises(CheckpointError, match="model.max_steps, train.lr"):
        check_resumable(checkpoint, changed, [0])
    with pytest.raises(CheckpointError, match=r"seeds \[0\], not \[0, 1\]"):
        check_resumable(checkpoint, config, [0, 1])
    with pytest.raises(CheckpointError, match="already holds a finished run of 5 steps"):
        train_seeds(config, [0], out_dir=tmp_path, progress=False)


def test_a_configuration_training_twice_at_once_gets_a_second_folder(tmp_path):
    """Two trials of one configuration at the same time must not write into one folder."""
    folder = tmp_path / "config"
    with trial_folder(folder) as first, trial_folder(folder) as second:
        assert first == folder and second != folder and second.is_dir()
    with trial_folder(folder) as again:  # released when the first trial ended
        assert again == folder


def test_a_trial_resumes_only_a_checkpoint_of_its_own_configuration(tmp_path):
    """What cannot be resumed is cleared, so that a fresh run does not append to it."""
    constant = {**TINY, "train.lr_schedule": "constant"}
    train_seeds(AIRConfig.from_flat({**constant, "train.steps": 5}), [0], out_dir=tmp_path,
                progress=False)
    longer = AIRConfig.from_flat({**constant, "train.steps": 10})
    assert resumable_checkpoint(tmp_path, longer, (0,)).step == 5
    assert resumable_checkpoint(tmp_path, AIRConfig.from_flat({**constant, "train.lr": 1e-3}),
                                (0,)) is None
    assert not any(tmp_path.iterdir())


def test_a_trial_does_not_resume_steps_trained_at_other_learning_rates(tmp_path):
    """With more steps the decay starts later: steps 3-4 of a 5-step run were trained at
    rates a 10-step run would not have used, so the configuration trains afresh."""
    train_seeds(AIRConfig.from_flat({**TINY, "train.steps": 5}), [0], out_dir=tmp_path,
                progress=False)
    assert resumable_checkpoint(tmp_path, AIRConfig.from_flat({**TINY, "train.steps": 10}),
                                (0,)) is None
    assert not any(tmp_path.iterdir())


def test_a_new_run_never_writes_over_a_recorded_one(tmp_path):
    """Training into a folder that holds a run is refused, naming --resume and --overwrite;
    --overwrite replaces the run, leaving no row of the old one."""
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["train", *SETS, "--set", "train.steps=10", "--out", str(out)]
    assert runner.invoke(main, args, catch_exceptions=False).exit_code == 0
    recorded = {name: (out / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
    again = runner.invoke(main, [*args, "--seed", "1"])
    assert again.exit_code != 0
    assert "holds a finished run of 10 steps" in again.output
    assert f"--resume {out}" in again.output and "--overwrite" in again.output
    assert all((out / name).read_bytes() == data for name, data in recorded.items())

    replaced = runner.invoke(main, [*args, "--seed", "1", "--overwrite"], catch_exceptions=False)
    assert replaced.exit_code == 0, replaced.output
    assert {row["seed"] for row in metrics_without_wall_time(out)} == {1}
    assert not (out / "seed_0").exists() and (out / "seed_1").is_dir()


def test_ctrl_c_says_how_to_go_on(tmp_path):
    """Interrupted from the keyboard, train exits 130 and prints the command that resumes it;
    that command then finishes the run."""
    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "cli.py"), "train", *SETS, "--set", "train.steps=100000",
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONFAULTHANDLER": "1"}
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    try:
        _, stderr = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGABRT)  # faulthandler prints where every thread is
        pytest.fail("train ignored Ctrl-C for 120 s:\n" + run.communicate()[1][-4000:])
    assert run.returncode == 130, stderr[-2000:]
    assert f"go on with `python cli.py train --resume {out}`" in stderr
    step = load_checkpoint(out).step
    assert step >= 5
    result = CliRunner().invoke(main, ["train", "--resume", str(out), "--steps", str(step + 5)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def _damaged(data: bytes, damage: str) -> bytes:
    if damage == "truncate":
        return data[: len(data) // 2]
    if damage == "garble":
        return b"\x93garbled" * 64
    middle = len(data) // 2  # same size, 4,000 bytes overwritten in the middle
    return data[:middle] + bytes(4000) + data[middle + 4000:]


@pytest.mark.parametrize("damage, said", [("truncate", "cannot be read"),
                                          ("garble", "cannot be read"),
                                          ("overwrite", "do not match the checksum")])
def test_a_damaged_checkpoint_is_set_aside_and_the_configuration_trains_afresh(tmp_path,
                                                                               damage, said):
    """A checkpoint cut off mid-write, garbled, or damaged inside at the same size is never a
    result: the trial sets it aside and trains afresh, and `train --resume` says what is wrong
    in one line."""
    config = AIRConfig.from_flat({**TINY, "train.steps": 5})
    train_seeds(config, [0], out_dir=tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(_damaged(data, damage))
    assert damage != "overwrite" or path.stat().st_size == len(data)
    with pytest.raises(CheckpointError, match=said):
        load_checkpoint(tmp_path)
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and said in result.output
    assert "Traceback" not in result.output
    assert resumable_checkpoint(tmp_path, config, (0,)) is None
    assert not path.exists() and len(list(tmp_path.glob("checkpoint.pt.unreadable-*"))) == 1


def test_ctrl_c_during_a_checkpoint_write_leaves_the_whole_file(tmp_path):
    """SIGINT that lands inside torch.save surfaces as KeyboardInterrupt after the file is in
    place (not as torch's zip-writer error, which the train command would report as a crash)."""
    target = tmp_path / "checkpoint.pt"

    class InterruptedMidway(io.BytesIO):
        def write(self, data):  # torch.save streams the zip through here
            os.kill(os.getpid(), signal.SIGINT)
            return writer.write(data)

    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as writer:
            torch.save({"weights": torch.arange(100_000)}, InterruptedMidway())
    assert torch.equal(torch.load(target)["weights"], torch.arange(100_000))
    assert list(tmp_path.iterdir()) == [target]
