"""Speed measurement times what trains: its phases are the training step, split."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from airsearch.config import AIRConfig
from airsearch.data import load_datasets
from airsearch.training.speed import interleaved_seconds, phase_flops
from airsearch.training.trainer import ReplicaStep

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
    config = AIRConfig.from_flat(TINY)
    phases = phase_flops(ReplicaStep(config, [0], images), 0)
    assert phases["forward"] > 0 and phases["backward"] > phases["forward"]
    whole = FlopCounterMode(display=False)
    with whole:
        ReplicaStep(config, [0], images)(0)
    assert sum(phases.values()) == whole.get_total_flops()


def test_interleaved_timing_reports_every_phase(images):
    step = ReplicaStep(AIRConfig.from_flat(TINY), [0], images)
    seconds = interleaved_seconds(step, lambda: torch.ones(64, 64) @ torch.ones(64, 64),
                                  repeats=4, block=2, warmup=1)
    assert set(seconds) == {"forward", "backward", "update", "step", "matmul"}
    assert all(s > 0 for s in seconds.values())
    assert seconds["step"] >= seconds["forward"]
