"""Early verdicts: a seed whose outcome is decided leaves the batch, is judged by the same rule
at its last evaluation, and a killed run with verdicts resumes bitwise."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from airsearch.config import AIRConfig, ConfigError
from airsearch.data import load_datasets
from airsearch.evaluation import outcomes
from airsearch.training.checkpoint import load_checkpoint, read_checkpoint_file
from airsearch.training.loop import train_seeds
from airsearch.training.step import ReplicaStep

TINY = {"data.train_images": 256, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "estimator.baseline_width": 32, "train.batch_size": 16,
        "train.steps": 10, "train.eval_every": 5}
# lr 0.5 and a huge initial z_where sd make some seeds (not all) diverge within five steps.
DIVERGING = {**TINY, "train.lr": 0.5, "init.where_sd": 5.0}

pytestmark = [pytest.mark.filterwarnings("ignore:full MNIST not found"),
              pytest.mark.usefixtures("private_cache")]


def row(accuracy, zero=0.0, top=0.0):
    return {outcomes.ACCURACY: accuracy, outcomes.SHARE_ZERO: zero, outcomes.SHARE_MAX: top}


def test_the_rule_decides_converged_collapsed_and_diverged():
    decide = dict(threshold=0.95, converge_evals=2, collapse_evals=3)
    assert outcomes.decided(diverged=True, history=[], **decide)
    assert outcomes.decided(diverged=False, history=[row(0.5), row(0.96), row(0.95)], **decide)
    assert not outcomes.decided(diverged=False, history=[row(0.96), row(0.94)], **decide)
    collapsed = [row(0.3, zero=0.95)] * 3
    assert outcomes.decided(diverged=False, history=collapsed, **decide)
    assert not outcomes.decided(diverged=False, history=collapsed[:2], **decide)
    assert outcomes.decided(diverged=False, history=[row(0.3, top=0.9)] * 3, **decide)
    assert not outcomes.decided(diverged=False, history=collapsed,
                                **{**decide, "collapse_evals": 0})


def test_a_verdict_needs_the_convergence_rule():
    with pytest.raises(ConfigError, match="eval.decide_converged"):
        AIRConfig.from_flat({"eval.hold": 3, "eval.decide_converged": 2})


def test_decided_seeds_leave_and_a_trial_ends_when_all_are_decided(tmp_path):
    """At threshold 0 every seed is decided converged at its first evaluation: the run stops
    there, each seed judged converged and marked as stopped."""
    config = AIRConfig.from_flat({**TINY, "eval.threshold": 0.0, "eval.decide_converged": 1})
    summary = train_seeds(config, [0, 1], out_dir=tmp_path, progress=False)
    assert [s.outcome for s in summary.seeds] == ["converged", "converged"]
    assert [s.stopped_at_step for s in summary.seeds] == [5, 5]
    assert all(len(s.history) == 1 for s in summary.seeds)
    steps = {json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()}
    assert steps == {5}
    assert (tmp_path / "seed_0" / "reconstruction.png").exists()
    full = train_seeds(AIRConfig.from_flat({**TINY, "eval.threshold": 0.0,
                                            "eval.verdicts": False}), [0, 1], progress=False)
    assert all(len(s.history) == 2 and s.stopped_at_step is None for s in full.seeds)


def test_a_diverged_seed_leaves_and_the_others_train_on(tmp_path):
    config = AIRConfig.from_flat(DIVERGING)
    summary = train_seeds(config, [0, 1, 2, 3], out_dir=tmp_path, progress=False)
    left = [s for s in summary.seeds if s.stopped_at_step is not None]
    stayed = [s for s in summary.seeds if s.stopped_at_step is None]
    assert left and stayed, "this config should make some, not all, seeds diverge by step 5"
    assert all(s.outcome == "diverged" and len(s.history) == 1 for s in left)
    assert all(len(s.history) == 2 for s in stayed)
    assert [s.seed for s in summary.seeds] == [0, 1, 2, 3]  # reported in seed order


def test_a_smaller_batch_trains_each_seed_as_the_full_batch_does():
    """Replicas that stay after others leave take the steps they would have taken in the
    full batch (to float rounding of batched kernels), and a step rebuilt from the cut-down
    state, as a resumed run rebuilds it, takes bitwise the same steps."""
    config = AIRConfig.from_flat(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train, _, _ = load_datasets(config.data)
    images = torch.from_numpy(train.images)
    full = ReplicaStep(config, [0, 1, 2], images)
    for step in range(3):
        full(step)
    smaller = full.subset([0, 2])
    rebuilt = ReplicaStep(config, [0, 2], images)
    rebuilt.load_state_dict(copy.deepcopy(smaller.state_dict()))  # as through a checkpoint
    for step in range(3, 6):
        elbo_full, _ = full(step)
        elbo_small, _ = smaller(step)
        elbo_rebuilt, _ = rebuilt(step)
        torch.testing.assert_close(elbo_small, elbo_full[[0, 2]], rtol=1e-4, atol=1e-3)
        assert torch.equal(elbo_small, elbo_rebuilt)
    for name, p in smaller.model.named_parameters():
        torch.testing.assert_close(p, dict(full.model.named_parameters())[name][[0, 2]],
                                   rtol=1e-3, atol=1e-4, msg=name)


class Killed(Exception):
    pass


def test_a_run_killed_after_a_verdict_resumes_bitwise(tmp_path):
    config = AIRConfig.from_flat(DIVERGING)
    whole = train_seeds(config, [0, 1, 2, 3], out_dir=tmp_path / "whole", progress=False)

    def kill(record):
        if record.step == 5:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train_seeds(config, [0, 1, 2, 3], out_dir=out, progress=False, on_eval=kill)
    checkpoint = load_checkpoint(out)
    assert len(checkpoint.seeds) < 4 and checkpoint.finished  # the diverged already left
    resumed = train_seeds(config, [0, 1, 2, 3], out_dir=out, progress=False, resume=checkpoint)
    for x, y in zip(whole.seeds, resumed.seeds, strict=True):
        assert (x.seed, x.outcome, x.stopped_at_step) == (y.seed, y.outcome, y.stopped_at_step)
        assert json.dumps(x.final, sort_keys=True) == json.dumps(y.final, sort_keys=True)
    a, b = (read_checkpoint_file(d / "checkpoint.pt") for d in (tmp_path / "whole", out))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
