"""Speed measurement times what trains: its phases are the training step, split."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from airsearch.config import AIRConfig
from airsearch.data import load_datasets
from airsearch.training.step import ReplicaStep
from benchmarks.speed import (
    TensorLayout,
    interleaved_seconds,
    phase_flops,
    step_matmuls,
    time_steps_side_by_side,
)

TINY = {"data.train_images": 256, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "estimator.baseline_width": 32, "train.batch_size": 16}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("AIRSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("AIRSEARCH_MNIST_DIR", raising=False)
        warnings.simplefilter("ignore", UserWarning)
        train, _, _ = load_datasets(AIRConfig.from_flat(TINY).data)
    return torch.from_numpy(train.images)


def test_phases_reproduce_the_training_step_exactly(images):
    config = AIRConfig.from_flat(TINY)
    whole, phased = ReplicaStep(config, [0, 1], images), ReplicaStep(config, [0, 1], images)
    for step in range(5):
        whole(step)
        terms = phased.forward(step)
        losses = terms.total
        phased.backward(losses)
        phased.update(step, losses)
    for a, b in zip(whole.model.parameters(), phased.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_phase_flops_add_up_to_the_step(images):
    # Without the proposal's window sums: forward-only matmuls that outweigh a tiny network's.
    config = AIRConfig.from_flat({**TINY, "model.where_proposal": "none"})
    phases = phase_flops(ReplicaStep(config, [0], images), 0)
    assert phases["forward"] > 0 and phases["backward"] > phases["forward"]
    whole = FlopCounterMode(display=False)
    with whole:
        ReplicaStep(config, [0], images)(0)
    assert sum(phases.values()) == whole.get_total_flops()


def test_the_replayed_matmuls_are_every_matmul_of_the_step(images):
    """The replay does the step's matmul work, no more and no less, at the step's layouts."""
    config = AIRConfig.from_flat(TINY)
    step = ReplicaStep(config, [0, 1], images)
    step_flops = sum(phase_flops(step, 0).values())
    replay = step_matmuls(step, 0)
    counter = FlopCounterMode(display=False)
    with counter:
        replay()
    assert counter.get_total_flops() == step_flops


def test_the_replay_keeps_transposed_and_expanded_operands():
    weight = torch.randn(2, 8, 4).transpose(1, 2)
    bias = torch.randn(1, 1, 4).expand(2, 3, 4)
    for tensor in (weight, bias):
        copy = TensorLayout(tuple(tensor.shape), tensor.stride(), tensor.device).random()
        assert copy.shape == tensor.shape and copy.stride() == tensor.stride()


def test_interleaved_timing_reports_every_phase(images):
    step = ReplicaStep(AIRConfig.from_flat(TINY), [0], images)
    seconds = interleaved_seconds(step, {"matmul": lambda: torch.ones(64, 64) @ torch.ones(64, 64)},
                                  repeats=4, block=2, warmup=1)
    assert set(seconds) == {"forward", "backward", "update", "step", "matmul"}
    assert all(s > 0 for s in seconds.values())
    assert seconds["step"] >= seconds["forward"]


def test_side_by_side_timing_runs_single_threaded_processes_together(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRSEARCH_CACHE", str(tmp_path))
    config = AIRConfig.from_flat(TINY)
    timings = time_steps_side_by_side(config, replicas=1, repeats=2, processes=2)
    assert [t.threads for t in timings] == [1, 1]
    for timing in timings:
        assert timing.seconds["step"] > 0 and timing.matmul_rate > 0


def test_a_failing_timing_process_raises_instead_of_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRSEARCH_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="a timing process failed"):
        time_steps_side_by_side(AIRConfig.from_flat(TINY), replicas=0, repeats=2, processes=2)
