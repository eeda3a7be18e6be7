"""Schedules of the objective: the blurred comparison (model.blur_px) and the likelihood sd."""

from __future__ import annotations

import pytest
import torch

from airsearch.config import AIRConfig
from airsearch.model.air import AIR
from airsearch.model.distributions import blur_matrix, gaussian_log_lik
from airsearch.model.spatial import write_glimpse
from airsearch.model.terms import Noise
from airsearch.schedules import Schedule, blur_weight, schedule_at

TINY = {"model.lstm_size": 32, "model.mlp_width": 32, "model.mlp_depth": 1,
        "model.z_what_size": 8, "model.glimpse_size": 10, "estimator.baseline_width": 32,
        "data.canvas_size": 32, "data.digit_size": 8.0}


def test_blur_matrix_is_a_normalised_gaussian():
    """Each row sums to 1; a point far from the border spreads with the sd asked for."""
    m = blur_matrix(64, 4.0)
    assert torch.allclose(m.sum(dim=1), torch.ones(64))
    point = torch.zeros(64, 64)
    point[32, 32] = 1.0
    spread = m @ point @ m.T
    offsets = torch.arange(64, dtype=torch.float32) - 32
    row_mass = spread.sum(dim=1)
    assert float((row_mass * offsets.pow(2)).sum() / row_mass.sum()) == pytest.approx(16.0,
                                                                                     rel=0.02)


def _pull(shift: float, blur: torch.Tensor | None) -> float:
    """d fit / d shift of a small blob written at (shift, 0), due to a small digit at (0.6, 0):
    the gradient with the digit in the image less the gradient on an empty image."""
    size, blob = 32, torch.ones(1, 6, 6)
    digit = write_glimpse(blob, torch.tensor([[8.0, 0.6, 0.0]]), size)
    grads = []
    for image in (digit, torch.zeros_like(digit)):
        where = torch.tensor([[8.0, shift, 0.0]], requires_grad=True)
        canvas = write_glimpse(blob, where, size)
        if blur is not None:
            image, canvas = blur @ image @ blur.T, blur @ canvas @ blur.T
        (grad,) = torch.autograd.grad(gaussian_log_lik(image[None], canvas[None], 0.3).sum(),
                                      where)
        grads.append(float(grad[0, 1]))
    return grads[0] - grads[1]


def test_only_the_blurred_fit_pulls_a_window_that_misses_the_digit():
    """Why the blur exists: a window that does not overlap a small digit gets no pull towards
    it from the sharp likelihood (bilinear sampling sees neighbouring pixels only); under the
    blur it is pulled towards the digit (to the right)."""
    assert _pull(-0.4, None) == 0.0  # the boxes are 8 px wide and 16 px apart
    assert _pull(-0.4, blur_matrix(32, 4.0)) > 0.0
    assert _pull(0.55, None) > 0.0  # once they overlap, the sharp fit pulls too


def test_blur_weight_falls_from_one_to_zero_over_blur_until():
    config = AIRConfig.from_flat({"model.blur_px": 4.0, "model.blur_until": 0.25,
                                  "train.steps": 1000})
    assert [blur_weight(config, s) for s in (0, 125, 250, 900)] == [1.0, 0.5, 0.0, 0.0]
    assert blur_weight(AIRConfig(), 0) == 0.0  # off by default
    assert schedule_at(config, 125).blur_weight == 0.5


def _terms(blur_px: float, weight: float):
    config = AIRConfig.from_flat({**TINY, "model.blur_px": blur_px})
    model = AIR(config, [0, 1])
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 32, 32, generator=gen) ** 4).expand(2, 4, 32, 32).contiguous()
    noise = Noise.draw([torch.Generator().manual_seed(r) for r in range(2)], 4, model.steps,
                       model.z_what_size, torch.device("cpu"))
    schedule = Schedule(z_pres_prior_logit=-4.6, temperature=0.1, likelihood_sd=0.3,
                        blur_weight=weight)
    return model.loss_terms(x, model.infer(x, noise), schedule)


def test_the_reported_elbo_leaves_the_blur_out_and_the_objective_takes_it_in():
    plain, blurred = _terms(0.0, 0.0), _terms(4.0, 1.0)
    assert torch.equal(plain.elbo, blurred.elbo)
    assert not torch.allclose(plain.model_loss, blurred.model_loss)
    assert torch.equal(_terms(4.0, 0.0).model_loss, plain.model_loss)  # weight 0: no change


def test_checkpoints_do_not_carry_the_blur():
    """The blur follows from the config, so a model's saved state is the same with or without."""
    assert set(AIR(AIRConfig.from_flat({**TINY, "model.blur_px": 4.0}), [0]).state_dict()) == \
        set(AIR(AIRConfig.from_flat(TINY), [0]).state_dict())


def test_likelihood_sd_moves_geometrically_between_its_fractions():
    config = AIRConfig.from_flat({"model.likelihood_sd": 0.15, "model.likelihood_sd_final": 0.3,
                                  "model.likelihood_sd_start": 0.4,
                                  "model.likelihood_sd_end": 0.6, "train.steps": 1000})
    sds = [schedule_at(config, s).likelihood_sd for s in (0, 400, 500, 600, 999)]
    assert sds == pytest.approx([0.15, 0.15, 0.15 * 2 ** 0.5, 0.3, 0.3])
    assert schedule_at(AIRConfig.from_flat({"model.likelihood_sd": 0.15}), 999).likelihood_sd \
        == 0.15  # no final sd: fixed


def test_a_larger_sd_makes_the_objective_weigh_the_same_misfit_less():
    config = AIRConfig.from_flat(TINY)
    model = AIR(config, [0])
    x = torch.rand(1, 2, 32, 32)
    noise = Noise.draw([torch.Generator().manual_seed(0)], 2, model.steps, model.z_what_size,
                       torch.device("cpu"))
    inference = model.infer(x, noise)
    elbo = {sd: model.loss_terms(x, inference, Schedule(z_pres_prior_logit=-4.6, temperature=0.1,
                                                        likelihood_sd=sd)).elbo
            for sd in (0.15, 0.3)}
    assert torch.all(elbo[0.15] < elbo[0.3])


@pytest.mark.parametrize("overlap, sd", [("avoid", 0.15), ("boxes", 0.3), ("allow", 0.3)])
def test_likelihood_sd_auto_is_weaker_where_digits_may_overlap(overlap, sd):
    """0 (the default) means 0.15, or 0.3 where digits may overlap; a value set is kept, and a
    late sd starts from the resolved one."""
    config = AIRConfig.from_flat({"data.overlap": overlap})
    assert schedule_at(config, 0).likelihood_sd == sd
    pinned = AIRConfig.from_flat({"data.overlap": overlap, "model.likelihood_sd": 0.2})
    assert schedule_at(pinned, 0).likelihood_sd == 0.2
    late = AIRConfig.from_flat({"data.overlap": overlap, "model.likelihood_sd_final": 0.6,
                                "train.steps": 100})
    assert schedule_at(late, 0).likelihood_sd == sd
    assert schedule_at(late, 99).likelihood_sd == pytest.approx(0.6)


def test_likelihood_sd_fractions_are_checked():
    with pytest.raises(ValueError, match="model.likelihood_sd_start"):
        AIRConfig.from_flat({"model.likelihood_sd_start": 0.7, "model.likelihood_sd_end": 0.6})
