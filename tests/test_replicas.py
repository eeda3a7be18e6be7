"""Vectorized replicas: replica r of a group behaves exactly like its seed trained alone."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from airsearch.config import AIRConfig
from airsearch.data import load_datasets
from airsearch.model.air import AIR
from airsearch.model.terms import Noise
from airsearch.schedules import schedule_at
from airsearch.training.loop import train_seeds
from airsearch.training.optim import ReplicaGuard, build_optimizer, replica_grad_norms
from airsearch.training.step import DATA_STREAM, NOISE_STREAM

TINY = {"data.train_images": 512, "data.heldout_images": 64, "model.lstm_size": 32,
        "model.mlp_width": 32, "model.mlp_depth": 1, "model.z_what_size": 8,
        "model.glimpse_size": 10, "estimator.baseline_width": 32, "train.batch_size": 16,
        "train.steps": 20, "train.eval_every": 10}


def tiny(**overrides):
    return AIRConfig.from_flat({**TINY, **overrides})


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private data cache for the whole module (the data set is generated once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("AIRSEARCH_MNIST_DIR", raising=False)
        yield


@pytest.fixture(scope="module")
def train_images(cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train, _, _ = load_datasets(tiny().data)
    return torch.from_numpy(train.images)


def run_manual(config, seeds, steps, images, poison=None):
    """The trainer's loop, step by step; poison(model, step) may corrupt weights before a step.

    Returns the model, the guard and each step's (R,) losses.
    """
    tc, K, B = config.train, config.model.max_steps, config.train.batch_size
    model = AIR(config, seeds)
    optimizer = build_optimizer(model, tc)
    guard = ReplicaGuard(model, tc.grad_clip)
    data_gens = [torch.Generator().manual_seed(s * 1000 + DATA_STREAM) for s in seeds]
    noise_gens = [torch.Generator().manual_seed(s * 1000 + NOISE_STREAM) for s in seeds]
    history = []
    for step in range(1, steps + 1):
        if poison is not None:
            poison(model, step)
        index = torch.stack([torch.randint(len(images), (B,), generator=g) for g in data_gens])
        x = images[index].to(torch.float32).div_(255.0)
        noise = Noise.draw(noise_gens, B, K, config.model.z_what_size, torch.device("cpu"))
        terms = model.loss_terms(x, model.infer(x, noise), schedule_at(config, step - 1))
        losses = terms.total
        optimizer.zero_grad(set_to_none=False)
        torch.where(guard.active, losses, torch.zeros_like(losses)).sum().backward()
        guard.before_step(losses)
        optimizer.step()
        guard.after_step()
        history.append(losses.detach().clone())
    return model, guard, history


def replica(model, r):
    return {name: p.detach()[r].clone() for name, p in model.named_parameters()}


def test_same_initial_weights_in_a_group():
    """Replica r of AIR(config, [a, s, b]) starts with exactly the weights of AIR(config, [s])."""
    config = tiny()
    alone = AIR(config, [5])
    group = AIR(config, [3, 5, 7])
    for name, p in alone.named_parameters():
        assert torch.equal(p.detach()[0], dict(group.named_parameters())[name].detach()[1]), name
    # and different seeds really differ
    assert not torch.equal(group.input_encoder.out.weight[0], group.input_encoder.out.weight[1])


def test_same_initial_weights_pytorch_scheme():
    """The replica-independence of init also holds without the AIR output-layer scheme."""
    config = tiny(**{"init.scheme": "pytorch"})
    alone, group = AIR(config, [2]), AIR(config, [0, 2])
    for (name, a), (_, g) in zip(alone.named_parameters(), group.named_parameters(), strict=True):
        assert torch.equal(a.detach()[0], g.detach()[1]), name


def test_first_steps_match_alone(train_images):
    """The first steps' losses and weights of seed s in a group equal those of s alone."""
    config = tiny()
    group, _, group_losses = run_manual(config, [0, 1, 2], 2, train_images)
    for r, seed in enumerate([0, 1, 2]):
        alone, _, alone_losses = run_manual(config, [seed], 2, train_images)
        for g, a in zip(group_losses, alone_losses, strict=True):
            torch.testing.assert_close(g[r], a[0], rtol=1e-5, atol=1e-3)
        # Adam divides each gradient by its own running scale, so an element whose gradient
        # is nearly zero moves by whatever rounding the batched and the single-replica
        # kernels leave in it: up to ~1e-5 after two steps on an Intel CPU's kernels, against
        # a step of lr = 3e-4 that a leak between replicas would show everywhere.
        for name, p in replica(alone, 0).items():
            torch.testing.assert_close(replica(group, r)[name], p, rtol=1e-4, atol=5e-5,
                                       msg=name)


def _compare_with_alone(config, seeds, check):
    group = train_seeds(config, seeds, progress=False)
    assert [r.seed for r in group.seeds] == seeds
    for r, seed in enumerate(seeds):
        if seed not in check:
            continue
        alone = train_seeds(config, [seed], progress=False).seeds[0]
        got = group.seeds[r]
        assert got.outcome == alone.outcome
        assert got.diverged_at_step is None
        for key, value in alone.final.items():
            assert got.final[key] == pytest.approx(value, rel=1e-3, abs=2 / 64), key
        assert len(got.history) == len(alone.history) == 2


def test_short_run_metrics_match_alone_fast():
    """Over a short train_seeds run, seed 1 trained in [0, 1] ends with the metrics of 1 alone."""
    _compare_with_alone(tiny(**{"train.steps": 10, "train.eval_every": 5}), [0, 1], {1})


@pytest.mark.slow
def test_short_run_metrics_match_alone():
    """Over 20 steps, seed s trained in [0, 1, 2] reaches the same final metrics as alone."""
    _compare_with_alone(tiny(), [0, 1, 2], {0, 1, 2})


def _blow_up(target, at_step, where=False):
    """Make replica `target` overflow for real with huge but finite weights.

    Default: a z_what sd of 1e30, whose KL overflows to inf (the canvas stays finite).
    where=True: a z_where sd of 1e30, which also turns that replica's canvas into nan.
    """
    def poison(model, step):
        if step == at_step:
            with torch.no_grad():
                if where:
                    model.location_head.out.bias[target, :, 3:] = 1e30
                else:
                    model.glimpse_encoder.out.bias[target, :, model.z_what_size:] = 1e30
    return poison


def test_nan_replica_leaves_others_untouched(train_images):
    """A replica whose loss becomes non-finite is frozen; the others train as if it never was."""
    config = tiny()
    steps, at = 5, 2
    model, guard, history = run_manual(config, [0, 1, 2], steps, train_images, _blow_up(1, at))
    assert not math.isfinite(float(history[at - 1][1]))
    assert guard.active.tolist() == [True, False, True]
    healthy, _, healthy_history = run_manual(config, [0, 2], steps, train_images)
    for r, h in ((0, 0), (2, 1)):
        for name, p in replica(healthy, h).items():
            torch.testing.assert_close(replica(model, r)[name], p, rtol=1e-4, atol=1e-6,
                                       msg=name)
        for g, a in zip(history, healthy_history, strict=True):
            assert math.isfinite(float(g[r]))
            torch.testing.assert_close(g[r], a[h], rtol=1e-5, atol=1e-3)


def test_diverged_replica_is_frozen(train_images):
    """The diverged replica's parameters stay exactly where they were when it diverged."""
    config = tiny()
    at = 2
    snapshot = {}

    def poison(model, step):
        _blow_up(1, at)(model, step)
        if step == at:
            snapshot.update(replica(model, 1))

    model, guard, _ = run_manual(config, [0, 1, 2], 5, train_images, poison)
    assert not bool(guard.active[1])
    for name, p in replica(model, 1).items():
        assert torch.all(torch.isfinite(p)), name
        assert torch.equal(p, snapshot[name]), name
    # the healthy ones did move
    start = AIR(config, [0, 1, 2])
    assert not torch.equal(replica(model, 0)["presence_head.out.bias"],
                           replica(start, 0)["presence_head.out.bias"])


def test_train_seeds_labels_divergence_without_raising():
    """A too-large lr makes seeds diverge: each is labelled 'diverged' at its step, nothing is
    raised, and the counts and the rate still cover every seed. (That a healthy replica is
    unaffected by a diverging one is proven on the manual loop above.)"""
    config = tiny(**{"train.lr": 0.5, "init.where_sd": 5.0, "train.steps": 10,
                     "train.eval_every": 5})
    summary = train_seeds(config, [0, 1, 2], progress=False)
    diverged = [s for s in summary.seeds if s.outcome == "diverged"]
    assert diverged, "lr 0.5 should make at least one seed diverge"
    for seed in diverged:
        assert seed.diverged_at_step is not None and 1 <= seed.diverged_at_step <= 10
        assert seed.final["diverged"] == 1.0 and seed.steps_to_converge is None
    for seed in summary.seeds:
        assert (seed.outcome == "diverged") == (seed.diverged_at_step is not None)
    assert summary.outcome_counts["diverged"] == len(diverged)
    assert sum(summary.outcome_counts.values()) == 3
    assert summary.rate.n == 3
    assert summary.rate.k == sum(s.outcome == "converged" for s in summary.seeds)


def test_nan_canvas_in_one_replica_does_not_raise(train_images):
    """A replica whose canvas turns nan is frozen like any other divergence, never raised."""
    config = tiny()
    model, guard, history = run_manual(config, [0, 1, 2], 4, train_images,
                                       _blow_up(1, 2, where=True))
    assert guard.active.tolist() == [True, False, True]
    assert all(math.isfinite(float(h[0])) and math.isfinite(float(h[2])) for h in history)


def test_gradient_clip_is_per_replica():
    """Only the replica over train.grad_clip is scaled, to exactly the clip; baselines never."""
    model = AIR(tiny(), [0, 1])
    guard = ReplicaGuard(model, grad_clip=1.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
        p.grad[1] *= 1e-6  # replica 1 stays far under the clip
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    guard.before_step(torch.zeros(2))
    norms = replica_grad_norms(guard.model_params)
    assert norms[0].item() == pytest.approx(1.0, rel=1e-4)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad[1], before[name][1]), name
        if name.startswith("baseline."):
            assert torch.equal(p.grad[0], before[name][0]), name
