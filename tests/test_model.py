"""AIR model: shapes, deterministic read-out, init schemes, optimiser groups and the estimator."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from airsearch.config import AIRConfig, ConfigError
from airsearch.model.air import AIR
from airsearch.model.distributions import NumSteps
from airsearch.model.replicated import ReplicatedLinear
from airsearch.model.terms import Noise
from airsearch.schedules import Schedule, learning_rate_factor
from airsearch.training.optim import build_optimizer, set_learning_rates

TINY = {"model.lstm_size": 32, "model.mlp_width": 32, "model.mlp_depth": 1,
        "model.z_what_size": 8, "model.glimpse_size": 10, "estimator.baseline_width": 32,
        "data.canvas_size": 32, "data.digit_size": 14.0}
R, B = 2, 5
PRIOR_LOGIT = math.log(0.01 / 0.99)
# past every warm-up, at the default likelihood sd
SCHEDULE = Schedule(z_pres_prior_logit=PRIOR_LOGIT, temperature=0.1, likelihood_sd=0.3)


def _config(**overrides):
    return AIRConfig.from_flat({**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


def _images(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(B, model.canvas, model.canvas, generator=gen) ** 4
    return x.unsqueeze(0).expand(model.replicas, *x.shape).contiguous()


def _noise(model, seed=0):
    gens = [torch.Generator().manual_seed(seed + r) for r in range(model.replicas)]
    return Noise.draw(gens, B, model.steps, model.z_what_size, torch.device("cpu"))


@pytest.fixture
def model():
    return AIR(_config(), [0, 1])


def _two_squares(canvas: int) -> torch.Tensor:
    """(1, 1, canvas, canvas): a bright 5 px square centred on pixel (row 6, col 22) and a
    dimmer one centred on (row 24, col 7)."""
    x = torch.zeros(1, 1, canvas, canvas)
    x[0, 0, 4:9, 20:25] = 1.0
    x[0, 0, 22:27, 5:10] = 0.6
    return x


def _to_norm(px: float) -> float:
    """A pixel coordinate on TINY's canvas -> normalised canvas coordinates."""
    return (2 * px + 1) / TINY["data.canvas_size"] - 1


def test_shapes(model):
    """infer, render and loss_terms return the documented (R, B, K, ...) shapes."""
    x = _images(model)
    K, D, G, H = model.steps, model.z_what_size, model.glimpse, model.canvas
    inf = model.infer(x, _noise(model))
    assert inf.pres_logits.shape == (R, B, K)
    for t in (inf.where_loc, inf.where_sd, inf.z_where):
        assert t.shape == (R, B, K, 3)
    for t in (inf.what_loc, inf.what_sd, inf.z_what):
        assert t.shape == (R, B, K, D)
    assert inf.n.shape == (R, B) and inf.n.dtype == torch.long
    assert int(inf.n.min()) >= 0 and int(inf.n.max()) <= K
    assert torch.all(inf.where_sd > 0) and torch.all(inf.what_sd > 0)
    canvas, glimpses = model.render(inf)
    assert canvas.shape == (R, B, H, H) and glimpses.shape == (R, B, K, G, G)
    terms = model.loss_terms(x, inf, SCHEDULE)
    assert terms.model_loss.shape == (R,) and terms.baseline_loss.shape == (R,)
    assert terms.elbo.shape == (R, B) and terms.n.shape == (R, B)
    assert torch.all(torch.isfinite(terms.model_loss))


def test_render_only_draws_present_objects(model):
    """With n = 0 the canvas is blank; the present mask follows n."""
    x = _images(model)
    noise = _noise(model)
    noise.pres.fill_(1.0)  # u = 1 never < p: no object
    inf = model.infer(x, noise)
    assert int(inf.n.max()) == 0
    canvas, _ = model.render(inf)
    assert float(canvas.detach().abs().max()) == 0.0
    noise.pres.fill_(0.0)  # every step present
    inf = model.infer(x, noise)
    assert torch.all(inf.n == model.steps) and torch.all(inf.present == 1)


def test_deterministic_readout(model):
    """Noise.zeros gives posterior means and n = leading steps with presence prob > 0.5."""
    x = _images(model)
    zeros = Noise.zeros(R, B, model.steps, model.z_what_size, torch.device("cpu"))
    a, b = model.infer(x, zeros), model.infer(x, zeros)
    assert torch.equal(a.n, b.n) and torch.equal(a.z_where, b.z_where)
    assert torch.equal(a.z_what, a.what_loc) and torch.equal(a.z_where, a.where_loc)
    above = (torch.sigmoid(a.pres_logits) > 0.5).long()
    assert torch.equal(a.n, torch.cumprod(above, -1).sum(-1))
    again = AIR(_config(), [0, 1]).infer(x, zeros)
    assert torch.equal(again.n, a.n) and torch.equal(again.pres_logits, a.pres_logits)


def test_sampling_noise_matters(model):
    """Different noise gives different samples (the deterministic test is not vacuous)."""
    x = _images(model)
    a, b = model.infer(x, _noise(model, 0)), model.infer(x, _noise(model, 10))
    assert not torch.equal(a.z_what, b.z_what)


def test_air_init_sets_output_layers():
    """scheme=air: decoder bias, presence bias, where loc = prior mean, softplus(sd bias) = sd."""
    config = _config(init__decoder_bias=-3.0, init__presence_bias=1.5, init__where_sd=0.2,
                     prior__where_scale_loc=2.5)
    m = AIR(config, [0, 1])
    assert torch.all(m.glimpse_decoder.out.bias == -3.0)
    assert torch.all(m.presence_head.out.bias == 1.5)
    loc_bias = m.location_head.out.bias
    prior_scale = config.where_scale_prior()[0]  # 2.5, scaled by the digit-size rule
    torch.testing.assert_close(loc_bias[..., :3],
                               torch.tensor([prior_scale, 0.0, 0.0]).expand(R, 1, 3))
    torch.testing.assert_close(F.softplus(loc_bias[..., 3:]), torch.full((R, 1, 3), 0.2))


def test_air_init_zero_where_loc():
    """init.where_loc=zero puts the location bias at 0 instead of the prior mean."""
    m = AIR(_config(init__where_loc="zero"), [0])
    assert torch.all(m.location_head.out.bias[..., :3] == 0.0)


def test_air_init_heads_start_at_biases():
    """With head_weight_scale=0 (and windows not moved by a proposal) the first read-out is
    exactly the prior mean and sd."""
    m = AIR(_config(init__head_weight_scale=0.0, model__where_proposal="none"), [0, 1])
    x = _images(m)
    inf = m.infer(x, Noise.zeros(R, B, m.steps, m.z_what_size, torch.device("cpu")))
    prior_mean = torch.tensor([m.config.where_scale_prior()[0], 0.0, 0.0]).expand_as(inf.where_loc)
    torch.testing.assert_close(inf.where_loc, prior_mean)
    torch.testing.assert_close(inf.where_sd, torch.full_like(inf.where_sd, 0.1))
    torch.testing.assert_close(inf.pres_logits, torch.full_like(inf.pres_logits, 2.0))


def test_where_proposal_starts_each_step_on_what_is_left_unexplained():
    """residual_peak: with the heads silent (weights 0), step 0's window is centred on the
    brighter of two squares, and, once step 0 has drawn over it (a decoder that draws white),
    step 1's on the other one (DAIR). Without the proposal both sit at the prior mean."""
    def first_two_shifts(proposal, residual=True):
        m = AIR(_config(model__where_proposal=proposal, init__head_weight_scale=0.0,
                        init__decoder_bias=20.0, prior__where_scale_loc=6.4,  # 5 px windows
                        model__residual_input=residual), [0])
        torch.nn.init.zeros_(m.glimpse_decoder.out.weight)
        inf = m.infer(_two_squares(m.canvas),
                      Noise.zeros(1, 1, m.steps, m.z_what_size, torch.device("cpu")))
        return inf.where_loc[0, 0, :2, 1:]  # (step, (x, y)) normalised

    torch.testing.assert_close(first_two_shifts("residual_peak"),
                               torch.tensor([[_to_norm(22), _to_norm(6)],
                                             [_to_norm(7), _to_norm(24)]]))
    torch.testing.assert_close(first_two_shifts("none"), torch.zeros(2, 2))
    # Plain AIR: no step sees what another drew, so both start on the brighter square.
    torch.testing.assert_close(first_two_shifts("residual_peak", residual=False),
                               torch.tensor([[_to_norm(22), _to_norm(6)]] * 2))


@pytest.mark.parametrize("mask", ["none", "earlier_windows"])
def test_proposal_masking_earlier_windows_moves_on_from_an_object_left_undrawn(mask):
    """With a decoder that draws nothing, the brighter square is still unexplained after step
    0 framed it: step 1 starts on it again, unless model.proposal_mask=earlier_windows hides
    what lies inside step 0's window from the proposal; then it starts on the other square."""
    m = AIR(_config(model__where_proposal="residual_peak", init__head_weight_scale=0.0,
                    init__decoder_bias=-20.0, prior__where_scale_loc=6.4,  # 5 px windows
                    model__proposal_mask=mask), [0])
    torch.nn.init.zeros_(m.glimpse_decoder.out.weight)
    inf = m.infer(_two_squares(m.canvas),
                  Noise.zeros(1, 1, m.steps, m.z_what_size, torch.device("cpu")))
    bright, dim = [_to_norm(22), _to_norm(6)], [_to_norm(7), _to_norm(24)]
    second = dim if mask == "earlier_windows" else bright
    torch.testing.assert_close(inf.where_loc[0, 0, :2, 1:], torch.tensor([bright, second]))


@pytest.mark.parametrize("flat, mask", [
    ({}, "none"), ({"data.digit_size_max": 20.0}, "earlier_windows"),
    ({"data.digit_size_jitter": 0.3}, "earlier_windows"),
    ({"data.digit_size_max": 20.0, "data.overlap": "boxes"}, "none"),
    ({"data.overlap": "allow"}, "none"),
    ({"data.digit_size_max": 20.0, "model.where_proposal": "residual_peak"}, "none"),
    ({"model.proposal_mask": "earlier_windows"}, "earlier_windows"),
    ({"data.digit_size_max": 20.0, "model.proposal_mask": "none"}, "none")])
def test_auto_mask_hides_earlier_windows_where_framed_digits_never_overlap(flat, mask):
    assert AIRConfig.from_flat({**TINY, **flat}).proposal_mask() == mask


def test_proposal_mask_needs_a_proposal():
    with pytest.raises(ConfigError, match="model.proposal_mask"):
        AIRConfig.from_flat({**TINY, "model.where_proposal": "none",
                             "model.proposal_mask": "earlier_windows"}).check_effective(
            ["model.proposal_mask"])


def test_object_proposal_frames_each_object_at_its_size():
    """residual_object: with the heads silent, step 0's window frames the larger square at the
    inverse scale of a digit of its size, step 1 (after step 0 drew over it) the smaller one,
    at a larger inverse scale; sizes outside the data's range are framed as its nearest end."""
    def first_two_starts(low, high):
        m = AIR(_config(model__where_proposal="residual_object", init__head_weight_scale=0.0,
                        init__decoder_bias=20.0, data__digit_size=low, data__digit_size_max=high),
                [0])
        torch.nn.init.zeros_(m.glimpse_decoder.out.weight)
        x = torch.zeros(1, 1, m.canvas, m.canvas)
        x[0, 0, 2:12, 2:12] = 1.0      # 10 px of ink: a 14 px digit
        x[0, 0, 20:25, 20:25] = 1.0    # 5 px of ink: a 7 px digit
        inf = m.infer(x, Noise.zeros(1, 1, m.steps, m.z_what_size, torch.device("cpu")))
        return m, inf.where_loc[0, 0, :2]

    m, starts = first_two_starts(7.0, 14.0)
    scale_of = m.config.where_scale_for
    torch.testing.assert_close(starts[:, 0], torch.tensor([scale_of(14.0), scale_of(7.0)]))
    torch.testing.assert_close(starts[0, 1:], torch.tensor([_to_norm(6.5), _to_norm(6.5)]))
    m, starts = first_two_starts(8.0, 12.0)  # both squares beyond the range: clamped
    torch.testing.assert_close(starts[:, 0], torch.tensor([scale_of(12.0), scale_of(8.0)]))


@pytest.mark.parametrize("flat, proposal", [
    ({}, "residual_peak"), ({"data.digit_size_jitter": 0.3}, "residual_object"),
    ({"data.digit_size": 10.0, "data.digit_size_max": 20.0}, "residual_object"),
    ({"data.digit_size_max": 20.0, "model.where_proposal": "residual_peak"}, "residual_peak"),
    ({"model.where_proposal": "none"}, "none"),
    ({"data.overlap": "allow"}, "residual_object"), ({"data.overlap": "boxes"}, "residual_object"),
    ({"data.overlap": "allow", "model.where_proposal": "residual_peak"}, "residual_peak")])
def test_auto_proposal_frames_the_ink_where_sizes_vary_or_digits_overlap(flat, proposal):
    config = AIRConfig.from_flat({**TINY, **flat})
    assert config.where_proposal() == proposal


@pytest.mark.parametrize("overlap, composition, saturates", [
    ("avoid", "auto", False), ("boxes", "auto", False), ("allow", "auto", True),
    ("avoid", "saturate", True), ("allow", "sum", False)])
def test_composition_follows_the_data_unless_set(overlap, composition, saturates):
    """model.composition=auto clips the canvas exactly when the data clips crossing ink."""
    config = _config(data__overlap=overlap, model__composition=composition)
    assert config.saturates() is saturates


@pytest.mark.parametrize("composition", ["sum", "saturate"])
def test_saturated_canvas_draws_crossing_strokes_once(composition):
    """Three white glimpses written on one spot: summed, the spot is three times full ink and
    the image (clipped at full ink, as data.overlap=allow makes it) fits badly; saturated, the
    canvas is that image and fits it exactly."""
    m = AIR(_config(model__composition=composition, model__where_proposal="none",
                    init__head_weight_scale=0.0, init__decoder_bias=20.0), [0])
    torch.nn.init.zeros_(m.glimpse_decoder.out.weight)
    x = torch.zeros(1, 1, m.canvas, m.canvas)
    noise = Noise.zeros(1, 1, m.steps, m.z_what_size, torch.device("cpu"))
    noise.pres.fill_(0.0)  # every step present
    inference = m.infer(x, noise)
    canvas, _ = m.render(inference)
    image = canvas.detach().clamp(max=1.0)
    with torch.no_grad():
        fit = m.elbo_terms(image, m.infer(image, noise), SCHEDULE).log_lik
        best = m.elbo_terms(canvas.detach(), m.infer(canvas.detach(), noise), SCHEDULE).log_lik
    if composition == "sum":
        assert float(canvas.detach().max()) == pytest.approx(3.0, abs=1e-3)
        assert float(fit) < float(best) - 1000.0
    else:
        assert float(canvas.detach().max()) == 1.0
        assert float(fit) == pytest.approx(float(best))


def test_pytorch_init_leaves_defaults():
    """scheme=pytorch keeps framework-default init; air differs only in the output layers."""
    air, plain = AIR(_config(), [0, 1]), AIR(_config(init__scheme="pytorch"), [0, 1])
    bound = 1.0 / math.sqrt(plain.glimpse_decoder.out.in_features)
    for bias in (plain.glimpse_decoder.out.bias, plain.presence_head.out.bias):
        assert float(bias.detach().abs().max()) <= bound
    assert not torch.any(plain.glimpse_decoder.out.bias == -2.0)
    assert not torch.any(plain.presence_head.out.bias == 2.0)
    changed = {"glimpse_decoder.out.bias", "presence_head.out.weight", "presence_head.out.bias",
               "location_head.out.weight", "location_head.out.bias"}
    a, p = dict(air.named_parameters()), dict(plain.named_parameters())
    for name in a:
        if name not in changed:
            assert torch.equal(a[name], p[name]), name
    torch.testing.assert_close(a["presence_head.out.weight"], p["presence_head.out.weight"] * 0.1)
    torch.testing.assert_close(a["location_head.out.weight"], p["location_head.out.weight"] * 0.1)


def test_every_linear_is_initialised():
    """No parameter is left as torch.empty garbage: all finite and within the default bound."""
    m = AIR(_config(init__scheme="pytorch"), [3])
    for mod in m.modules():
        if isinstance(mod, ReplicatedLinear):
            bound = 1.0 / math.sqrt(mod.in_features)
            assert float(mod.weight.abs().max()) <= bound
            assert float(mod.weight.std()) > 0.2 * bound


# ------------------------------------------------------------------- optimiser groups (Pyro #1374)

@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_optimizer_groups(optimizer):
    """'baseline' holds exactly the baseline's parameters at baseline_lr, 'model' all others."""
    config = _config(train__lr=3e-4, train__baseline_lr=7e-3, train__optimizer=optimizer)
    m = AIR(config, [0, 1])
    opt = build_optimizer(m, config.train)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"model", "baseline"}
    assert groups["model"]["lr"] == 3e-4 and groups["baseline"]["lr"] == 7e-3
    base_ids = {id(p) for p in groups["baseline"]["params"]}
    model_ids = {id(p) for p in groups["model"]["params"]}
    assert base_ids == {id(p) for p in m.baseline.parameters()}
    assert not base_ids & model_ids
    assert base_ids | model_ids == {id(p) for p in m.parameters()}
    assert len(groups["model"]["params"]) == len(model_ids)  # no duplicates
    presence = {id(p) for p in m.presence_head.parameters()}
    assert presence <= model_ids


def test_baseline_lr_is_applied():
    """One optimiser step moves the baseline by the baseline lr, not the model lr (Adam)."""
    config = _config(train__lr=1e-5, train__baseline_lr=1e-2)
    m = AIR(config, [0])
    opt = build_optimizer(m, config.train)
    x = _images(m)
    before = m.baseline.out.bias.detach().clone()
    terms = m.loss_terms(x, m.infer(x, _noise(m)), SCHEDULE)
    terms.total.sum().backward()
    opt.step()
    moved = float((m.baseline.out.bias - before).abs().max())
    assert moved == pytest.approx(1e-2, rel=1e-3)  # Adam's first step is lr * sign(grad)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_learning_rate_decay_keeps_the_baseline_ratio(schedule):
    """Both groups follow one multiplier: full while held, train.lr_final after the decay."""
    config = _config(train__lr=1e-3, train__baseline_lr=1e-2, train__lr_schedule=schedule,
                     train__steps=100, train__lr_decay_start=0.1, train__lr_decay_end=0.3,
                     train__lr_final=0.25)
    opt = build_optimizer(AIR(config, [0]), config.train)
    seen = {}
    for step in (0, 10, 20, 30, 100):
        set_learning_rates(opt, learning_rate_factor(config.train, step))
        seen[step] = {g["name"]: g["lr"] for g in opt.param_groups}
    assert seen[0] == seen[10] == {"model": 1e-3, "baseline": 1e-2}
    assert seen[30]["model"] == pytest.approx(2.5e-4) == seen[100]["model"]
    assert 2.5e-4 < seen[20]["model"] < 1e-3
    for rates in seen.values():
        assert rates["baseline"] == pytest.approx(10 * rates["model"])


@pytest.mark.parametrize("steps", [10, 5000, 120000])
def test_default_decay_spans_the_last_two_fifths_of_any_run(steps):
    """Fractions of train.steps: a 5,000-step run decays over steps 3,000-5,000 (the measured
    recipe), a 120,000-step study over its last 48,000, each ending at train.lr_final."""
    train = _config(train__steps=steps).train
    assert train.lr_schedule == "cosine"
    factors = [learning_rate_factor(train, step) for step in range(0, steps + 1, steps // 10)]
    assert factors[:7] == [1.0] * 7
    assert 1.0 > factors[7] > factors[8] > factors[9] > factors[10]
    assert factors[10] == pytest.approx(train.lr_final)


def test_constant_learning_rate_ignores_the_decay_fields():
    config = _config(train__lr_schedule="constant", train__lr_decay_start=0.0,
                     train__lr_decay_end=0.01, train__lr_final=0.0)
    assert learning_rate_factor(config.train, 10**6) == 1.0


# ------------------------------------------------------------------- the estimator

def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


def _flat(grads):
    return torch.cat([g.flatten() for g in grads if g is not None])


def _terms(model, x, noise, buffers):
    """loss_terms from the same running statistics each time (training mode updates them)."""
    with torch.no_grad():
        for name, value in model.named_buffers():
            value.copy_(buffers[name])
    return model.loss_terms(x, model.infer(x, noise), SCHEDULE)


def _buffers(model):
    return {name: value.clone() for name, value in model.named_buffers()}


def test_baseline_enters_the_model_gradient(model):
    """The presence-head gradient changes when the baseline's output changes (it is used)."""
    x = _images(model)
    noise = _noise(model)
    params = list(model.presence_head.parameters())
    buffers = _buffers(model)
    g0 = _flat(_grads(_terms(model, x, noise, buffers).model_loss.sum(), params))
    again = _flat(_grads(_terms(model, x, noise, buffers).model_loss.sum(), params))
    torch.testing.assert_close(again, g0)  # same inputs, same gradient
    with torch.no_grad():
        model.baseline.out.bias.add_(50.0)
    g1 = _flat(_grads(_terms(model, x, noise, buffers).model_loss.sum(), params))
    assert not torch.allclose(g0, g1, rtol=1e-4, atol=1e-6)


def test_baseline_trained_only_by_baseline_loss(model):
    """baseline_loss gives the baseline a non-zero gradient; model_loss gives it none."""
    x = _images(model)
    terms = model.loss_terms(x, model.infer(x, _noise(model)), SCHEDULE)
    params = list(model.baseline.parameters())
    from_model = _grads(terms.model_loss.sum(), params)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in from_model)
    from_baseline = _flat(_grads(terms.baseline_loss.sum(), params))
    assert float(from_baseline.abs().max()) > 0
    model_params = list(model.presence_head.parameters()) + list(model.lstm.parameters())
    from_baseline_to_model = _grads(terms.baseline_loss.sum(), model_params)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in from_baseline_to_model)


@pytest.mark.parametrize("baseline_input", ["image", "image_and_z"])
def test_baseline_never_sees_n(baseline_input):
    """The baseline's prediction does not change when only the sampled n changes."""
    m = AIR(_config(estimator__baseline_input=baseline_input), [0, 1])
    x = _images(m)
    noise = _noise(m)
    outputs, ns = [], []
    for u in (0.0, 1.0):
        noise.pres.fill_(u)
        inf = m.infer(x, noise)
        ns.append(inf.n)
        outputs.append(m.baseline(m._baseline_input(x, inf)))
    assert not torch.equal(ns[0], ns[1])
    assert torch.equal(outputs[0], outputs[1])


def test_reinforce_term_present(model):
    """The presence-head gradient has a score-function part beyond the analytic KL, and it
    depends on the sampled n."""
    x = _images(model)
    params = list(model.presence_head.parameters())
    noise = _noise(model)
    buffers = _buffers(model)
    score_parts = []
    for u in (0.0, 1.0):
        noise.pres.fill_(u)
        terms = _terms(model, x, noise, buffers)
        inf = model.infer(x, noise)
        kl_n = inf.num_steps.kl(NumSteps(torch.full_like(inf.pres_logits, PRIOR_LOGIT)))
        g_total = _flat(_grads(terms.model_loss.sum(), params))
        g_kl = _flat(_grads(kl_n.mean(-1).sum(), params))
        score = g_total - g_kl
        assert float(score.abs().max()) > 1e-3 * float(g_total.abs().max())
        score_parts.append(score)
    assert not torch.allclose(score_parts[0], score_parts[1], rtol=1e-3, atol=1e-6)


def test_elbo_is_finite_and_negative_loss(model):
    """model_loss at the sampled n has the ELBO as its value plus a zero-mean-ish score term."""
    x = _images(model)
    terms = model.loss_terms(x, model.infer(x, _noise(model)), SCHEDULE)
    assert torch.all(torch.isfinite(terms.elbo))


def test_decoder_sees_scale_draws_by_window_size_and_is_off_by_default():
    """With model.decoder_sees_scale the same z_what drawn in a smaller window decodes to a
    different glimpse; by default the decoder reads z_what alone."""
    D = TINY["model.z_what_size"]
    plain = AIR(_config(), seeds=[0])
    seeing = AIR(_config(model__decoder_sees_scale=True), seeds=[0])
    assert plain.glimpse_decoder.hidden[0].in_features == D
    assert seeing.glimpse_decoder.hidden[0].in_features == D + 1
    z_what = torch.randn(1, 2, D)
    where = seeing.where_prior_loc.expand(1, 2, 3).clone()
    smaller = where.clone()
    smaller[..., 0] += 1.0
    assert not torch.allclose(seeing.decode(z_what, where), seeing.decode(z_what, smaller))
    torch.testing.assert_close(plain.decode(z_what, where), plain.decode(z_what, smaller))
