"""The first-step diagnostic on real multi-MNIST images (a tiny AIR, no training)."""

from __future__ import annotations

import math

import pytest
import torch

from airsearch.config import AIRConfig
from airsearch.data import load_datasets
from airsearch.diagnostics.first_step import first_step_value
from airsearch.model.air import AIR

TINY = {"model.lstm_size": 32, "model.mlp_width": 32, "model.mlp_depth": 1,
        "model.z_what_size": 8, "model.glimpse_size": 10, "data.train_images": 256,
        "data.heldout_images": 16}


def value(**overrides: object):
    config = AIRConfig.from_flat({**TINY, **overrides})
    train, _, _ = load_datasets(config.data)
    x = torch.from_numpy(train.images[:64]).to(torch.float32) / 255.0
    return first_step_value(AIR(config, [0]), x, seed=0)


def test_the_prior_term_is_the_count_prior():
    v = value()
    # Constant success probability p: log p(n=1) - log p(n=0) = log p.
    assert v.prior_log_ratio == pytest.approx(math.log(1e-4), rel=1e-3)
    assert v.kl_where > 0 and v.kl_what > 0
    assert 0.0 < v.ink_in_window < 1.0


def test_a_black_decoder_draws_nothing():
    """Decoder bias -20: the step writes (almost) nothing, so it gains nothing."""
    assert abs(value(**{"init.decoder_bias": -20.0}).log_lik_gain) < 1e-3


def test_a_wider_window_holds_more_ink():
    """Centred at the prior mean, inverse scale 1.5 (a 2/3-canvas window) covers more ink than
    the default 3."""
    centred = {"model.where_proposal": "none"}
    wide = value(**centred, **{"prior.where_scale_loc": 1.5})
    assert wide.ink_in_window > 2 * value(**centred).ink_in_window


def test_the_proposal_starts_the_window_on_ink():
    """The residual-peak proposal (default) puts the untrained first window on more ink than
    the centred window."""
    centred = value(**{"model.where_proposal": "none"})
    assert value().ink_in_window > 1.5 * centred.ink_in_window


def test_command_makes_one_row_per_repeated_value():
    from click.testing import CliRunner

    from cli import main

    sets = [arg for key, v in TINY.items() for arg in ("--set", f"{key}={v}")]
    result = CliRunner().invoke(main, ["diagnose", "first-step", *sets, "--images", "16",
                                       "--set", "data.digit_size=21",
                                       "--set", "data.digit_size=10.5"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "data.digit_size=" in line]
    assert len(rows) == 2 and "data.digit_size=10.5" in rows[1]
    bad = CliRunner().invoke(main, ["diagnose", "first-step", "--set", "data.digit_sise=3"])
    assert bad.exit_code != 0 and "data.digit_size" in bad.output
