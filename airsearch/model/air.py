"""Attend, Infer, Repeat (Eslami et al. 2016) for R independent replicas at once.

Reads top-down in the order data flows:
  guide:  image -> input encoder -> LSTM (one step per object) -> location head (an offset
          from the densest window of what is still unexplained, model.where_proposal, outside
          earlier windows where model.proposal_mask says) -> z_where
          -> spatial transformer reads a glimpse -> glimpse encoder -> z_what; presence head
          -> per-step presence logits -> number of objects n (truncated geometric, NumSteps)
  model:  z_what -> glimpse decoder -> spatial transformer writes it -> canvas = sum of the
          first n written glimpses (clipped at full ink under model.composition=saturate)
          -> Gaussian pixel likelihood; Normal priors on what/where,
          NumSteps prior with the annealed success probability.
The loss is the negative ELBO plus REINFORCE for the discrete n, with a neural baseline; early
in training it may also compare blurred images (model.blur_px), which the ELBO reported leaves
out.

Shapes: R replicas, B images, K steps, H x W canvas, G x G glimpse, D = z_what size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from airsearch.config import MNIST_INK_FRACTION, AIRConfig
from airsearch.model import estimators
from airsearch.model.distributions import NumSteps, blur_matrix, gaussian_log_lik, normal_kl
from airsearch.model.replicated import (
    ReplicatedLinear,
    ReplicatedLSTMCell,
    ReplicatedMLP,
    softplus_inverse,
)
from airsearch.model.spatial import (
    box_filter,
    densest_window,
    inside_window,
    object_box,
    read_glimpse,
    write_glimpse,
)
from airsearch.model.terms import ElboTerms, Inference, LossTerms, Noise
from airsearch.schedules import Schedule

# What model.where_proposal=residual_object counts as ink in what a step sees (in [0, 1]; the
# residual is negative where earlier steps over-drew).
PROPOSAL_INK = 0.3


class AIR(nn.Module):
    def __init__(self, config: AIRConfig, seeds: list[int]) -> None:
        super().__init__()
        self.config = config
        m, d = config.model, config.data
        R = len(seeds)
        self.replicas, self.canvas, self.glimpse = R, d.canvas_size, m.glimpse_size
        self.steps, self.z_what_size = m.max_steps, m.z_what_size
        self.saturates = config.saturates()
        pixels, glimpse_pixels = d.canvas_size ** 2, m.glimpse_size ** 2
        mlp = dict(width=m.mlp_width, depth=m.mlp_depth, act=m.activation)

        # guide (inference network)
        self.input_encoder = ReplicatedMLP(R, pixels, out_features=m.mlp_width, **mlp)
        self.lstm = ReplicatedLSTMCell(R, m.mlp_width + m.z_what_size + 3, m.lstm_size)
        self.location_head = ReplicatedMLP(R, m.lstm_size, out_features=6, **mlp)
        self.presence_head = ReplicatedMLP(R, m.lstm_size, out_features=1, **mlp)
        self.glimpse_encoder = ReplicatedMLP(R, glimpse_pixels, out_features=2 * m.z_what_size,
                                             **mlp)
        # generative model
        self.decoder_sees_scale = m.decoder_sees_scale
        self.glimpse_decoder = ReplicatedMLP(R, m.z_what_size + int(m.decoder_sees_scale),
                                             out_features=glimpse_pixels, **mlp)
        # variance reduction for the score-function term of n
        e = config.estimator
        baseline_in = pixels + (m.max_steps * (m.z_what_size + 3)
                                if e.baseline_input == "image_and_z" else 0)
        self.baseline = ReplicatedMLP(R, baseline_in, width=e.baseline_width, depth=2,
                                      act=m.activation, out_features=1)

        # NVIL running statistics of the learning signal, one per replica.
        self.register_buffer("signal_mean", torch.zeros(R))
        self.register_buffer("signal_var", torch.ones(R))
        self.register_buffer("signal_seen", torch.zeros(R, dtype=torch.bool))
        p = config.prior
        scale_loc, scale_sd = config.where_scale_prior()
        self.register_buffer("where_prior_loc", torch.tensor([scale_loc, 0.0, 0.0]))
        self.register_buffer("where_prior_sd",
                             torch.tensor([scale_sd, p.where_shift_sd, p.where_shift_sd]))
        # Not saved: they follow from the config, and checkpoints stay loadable across them.
        self.register_buffer("blur", blur_matrix(d.canvas_size, m.blur_px) if m.blur_px > 0
                             else None, persistent=False)
        # model.where_proposal: sums over windows of the prior's size, where a step looks first.
        self.proposal = config.where_proposal()
        self.masks_earlier_windows = config.proposal_mask() == "earlier_windows"
        window_px = max(1, round(d.canvas_size / scale_loc))
        self.register_buffer("proposal_box", box_filter(d.canvas_size, window_px)
                             if self.proposal != "none" else None, persistent=False)
        smallest, largest = d.digit_size_range()
        self.ink_sides = (smallest * MNIST_INK_FRACTION, largest * MNIST_INK_FRACTION)
        self._init_weights([torch.Generator().manual_seed(s) for s in seeds])

    # ----------------------------------------------------------------------------- init
    def _init_weights(self, generators: list[torch.Generator]) -> None:
        """Framework-default init from each replica's generator, then the output-layer scheme."""
        for module in self.modules():  # fixed order, so replica r alone draws the same numbers
            if isinstance(module, ReplicatedLinear):
                module.reset_parameters(generators)
        init = self.config.init
        if init.scheme == "pytorch":
            return
        with torch.no_grad():
            # Blog/Pyro: a dark initial reconstruction keeps the guide from switching steps
            # off while the decoder still draws mid-grey squares.
            self.glimpse_decoder.out.bias.fill_(init.decoder_bias)
            presence, location = self.presence_head.out, self.location_head.out
            presence.weight.mul_(init.head_weight_scale)
            presence.bias.fill_(init.presence_bias)
            location.weight.mul_(init.head_weight_scale)
            if init.where_loc == "prior":
                location.bias[..., :3] = self.where_prior_loc
            else:
                location.bias[..., :3] = 0.0
            # A large initial z_where sd drives the count to zero (Kosiorek); start it small.
            location.bias[..., 3:] = softplus_inverse(init.where_sd)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Model and baseline parameters, kept apart so each gets its own learning rate."""
        baseline = list(self.baseline.parameters())
        ids = {id(p) for p in baseline}
        return {"model": [p for p in self.parameters() if id(p) not in ids],
                "baseline": baseline}

    # ----------------------------------------------------------------------------- guide
    def infer(self, x: torch.Tensor, noise: Noise) -> Inference:
        """x (R, B, H, W) in [0, 1] -> latents for every step, sampled with `noise`."""
        R, B, H, W = x.shape
        K, D, G = self.steps, self.z_what_size, self.glimpse
        residual = self.config.model.residual_input
        if not residual:
            encoded = self.input_encoder(x.reshape(R, B, H * W))  # (R, B, E)
        h = x.new_zeros(R, B, self.lstm.hidden_size)
        c = torch.zeros_like(h)
        previous = x.new_zeros(R, B, D + 3)  # z_what, z_where of the last step
        drawn = torch.zeros_like(x)  # (R, B, H, W) what earlier steps drew (DAIR)
        framed = torch.zeros_like(x, dtype=torch.bool).view(R * B, H, W)  # earlier windows
        flat_images = x.reshape(R * B, H, W)
        hs, where_locs, where_sds, z_wheres, what_locs, what_sds, z_whats = ([] for _ in range(7))
        glimpses, writes = [], []
        for k in range(K):
            # What this step sees. Every step's drawing is subtracted, present or not, so the
            # presence logits still depend on the continuous latents alone.
            seen = x - self.compose(drawn) if residual else x
            if residual:
                encoded = self.input_encoder(seen.reshape(R, B, H * W))
            # z_pres is not an LSTM input: the presence logits of all K steps are then
            # functions of (x, z_what, z_where) alone and define one NumSteps distribution.
            h, c = self.lstm(torch.cat([encoded, previous], dim=-1), (h, c))
            where_out = self.location_head(h)  # (R, B, 6)
            where_loc, where_sd = where_out[..., :3], F.softplus(where_out[..., 3:])
            if self.proposal_box is not None:
                proposal_sees = seen.reshape(R * B, H, W)
                if self.masks_earlier_windows:
                    proposal_sees = proposal_sees.masked_fill(framed, 0.0)
                where_loc = where_loc + self._proposed_start(proposal_sees).view(R, B, 3)
            z_where = where_loc + where_sd * noise.where[:, :, k]  # (R, B, 3)
            if self.masks_earlier_windows:
                framed = framed | inside_window(z_where.detach().reshape(R * B, 3), H)
            glimpse = read_glimpse(flat_images, z_where.reshape(R * B, 3), G)  # (R*B, G, G)
            what_out = self.glimpse_encoder(glimpse.view(R, B, G * G))  # (R, B, 2D)
            what_loc, what_sd = what_out[..., :D], F.softplus(what_out[..., D:])
            z_what = what_loc + what_sd * noise.what[:, :, k]  # (R, B, D)
            previous = torch.cat([z_what, z_where], dim=-1)
            if residual:
                glimpse_k = self.decode(z_what, z_where).view(R, B, G, G)
                written_k = write_glimpse(glimpse_k.view(-1, G, G), z_where.reshape(-1, 3),
                                          H).view(R, B, H, W)
                drawn = drawn + written_k
                glimpses.append(glimpse_k)
                writes.append(written_k)
            for store, value in zip((hs, where_locs, where_sds, z_wheres, what_locs, what_sds,
                                     z_whats),
                                    (h, where_loc, where_sd, z_where, what_loc, what_sd, z_what),
                                    strict=True):
                store.append(value)
        hs_all = torch.stack(hs, dim=2)  # (R, B, K, L)
        pres_logits = self.presence_head(hs_all.view(R, B * K, -1)).view(R, B, K)
        n = NumSteps(pres_logits).sample_from_uniforms(noise.pres)  # (R, B)
        stack = lambda xs: torch.stack(xs, dim=2)  # noqa: E731  (R, B, K, ...)
        return Inference(pres_logits, stack(where_locs), stack(where_sds), stack(z_wheres),
                         stack(what_locs), stack(what_sds), stack(z_whats), n, noise.pres,
                         glimpses=stack(glimpses) if residual else None,
                         written=stack(writes) if residual else None)

    def _proposed_start(self, seen: torch.Tensor) -> torch.Tensor:
        """seen (N, H, W) -> (N, 3) what the proposal adds to the location head's z_where mean:
        the window's shift, and (residual_object) the inverse scale that frames the ink found
        there less the prior's mean, so a head that outputs the prior mean frames that ink."""
        if self.proposal == "residual_peak":
            return F.pad(densest_window(seen, self.proposal_box), (1, 0))  # scale unchanged
        centre, side = object_box(seen, self.proposal_box, ink=PROPOSAL_INK,
                                  grow_steps=2 * self.canvas, largest=self.ink_sides[1])
        # A fragment or a blob is framed as the nearest digit size the data draws.
        digit_px = side.clamp(*self.ink_sides) / MNIST_INK_FRACTION
        scale = self.config.where_scale_for(1.0) / digit_px - self.where_prior_loc[0]
        return torch.cat([torch.where(side > 0, scale, torch.zeros_like(scale))[:, None],
                          centre], dim=-1)

    # ----------------------------------------------------------------------------- model
    def decode(self, z_what: torch.Tensor, z_where: torch.Tensor) -> torch.Tensor:
        """z_what (R, N, D), z_where (R, N, 3) -> glimpse intensities (R, N, G*G). With
        model.decoder_sees_scale the decoder also reads the window's inverse scale (in prior
        sd from the prior mean), so it can draw strokes as thick as a digit that size has."""
        if self.decoder_sees_scale:
            scale = (z_where[..., :1] - self.where_prior_loc[0]) / self.where_prior_sd[0]
            z_what = torch.cat([z_what, scale], dim=-1)
        return torch.sigmoid(self.glimpse_decoder(z_what))

    def render(self, inference: Inference, presence: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvas (R, B, H, W) from the first n objects, and each step's glimpse (R, B, K, G, G).

        presence (R, B, K) replaces the 0/1 mask of the first n steps (relaxed estimator).
        """
        R, B, K, D = inference.z_what.shape
        G, H = self.glimpse, self.canvas
        if inference.written is not None:  # already drawn while inferring (DAIR)
            glimpses, written = inference.glimpses, inference.written
        else:
            glimpses = self.decode(inference.z_what.view(R, B * K, D),
                                   inference.z_where.view(R, B * K, 3)).view(R, B, K, G, G)
            written = write_glimpse(glimpses.view(-1, G, G), inference.z_where.reshape(-1, 3),
                                    H).view(R, B, K, H, H)
        presence = inference.present if presence is None else presence
        return self.compose((written * presence[..., None, None]).sum(dim=2)), glimpses

    def compose(self, summed: torch.Tensor) -> torch.Tensor:
        """The canvas from the sum of written glimpses: clipped at full ink when the data clips
        overlapping digits' ink (model.composition), so crossing strokes are not drawn twice
        as dark as the image shows them."""
        return summed.clamp(max=1.0) if self.saturates else summed

    def elbo_terms(self, x: torch.Tensor, inference: Inference, schedule: Schedule
                   ) -> ElboTerms:
        """The ELBO's pieces for x and its inferred latents at `schedule`'s step: the one place
        they are computed (training, evaluation and diagnostics all read them from here)."""
        canvas, _ = self.render(inference)
        log_lik = gaussian_log_lik(x, canvas, schedule.likelihood_sd)  # (R, B)
        coarse = self.blurred_fit(x, canvas, schedule)  # (R, B)
        present = inference.present  # (R, B, K)
        kl_where = normal_kl(inference.where_loc, inference.where_sd, self.where_prior_loc,
                             self.where_prior_sd).sum(-1)
        kl_what = normal_kl(inference.what_loc, inference.what_sd, 0.0, 1.0).sum(-1)
        posterior = inference.num_steps
        prior = NumSteps(torch.full_like(inference.pres_logits, schedule.z_pres_prior_logit))
        kl_steps = kl_where + kl_what
        return ElboTerms(log_lik=log_lik, blurred_fit=coarse, kl_where=kl_where, kl_what=kl_what,
                         kl_steps=kl_steps, present=present,
                         kl_objects=(kl_steps * present).sum(-1),
                         z_pres_posterior=posterior, z_pres_prior=prior,
                         kl_z_pres=posterior.kl(prior))

    def loss_terms(self, x: torch.Tensor, inference: Inference, schedule: Schedule
                   ) -> LossTerms:
        """Negative ELBO with the KL of n taken analytically on NumSteps, plus the gradient
        estimator of estimator.kind for n (airsearch.model.estimators), at `schedule`'s step."""
        terms = self.elbo_terms(x, inference, schedule)
        # Everything in the ELBO that depends on the sampled n, except the analytic KL of n.
        # The baseline learns it under every kind, so its parameter group always has a gradient.
        signal = (terms.fitted_log_lik - terms.kl_objects).detach()
        baseline = self.baseline(self._baseline_input(x, inference)).squeeze(-1)  # (R, B)
        signal, advantage = self._advantage(signal, baseline.detach())
        surrogate = self._surrogate(x, inference, terms, advantage, schedule)
        return LossTerms(model_loss=-surrogate.mean(-1),
                         baseline_loss=(signal - baseline).pow(2).mean(-1),
                         elbo=terms.elbo.detach(), n=inference.n)

    def _surrogate(self, x: torch.Tensor, inference: Inference, terms: ElboTerms,
                   advantage: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """(R, B) objective whose gradient is estimator.kind's estimate of the ELBO's gradient.

        The model computes what each estimator needs (the relaxed canvas, the NVIL scale, the
        priors); the estimators only combine tensors.
        """
        e = self.config.estimator
        if e.kind == "relaxed":
            presence = estimators.relaxed_presence(inference.pres_logits, inference.pres_uniforms,
                                                   schedule.temperature)
            canvas, _ = self.render(inference, presence)
            fit = (gaussian_log_lik(x, canvas, schedule.likelihood_sd)
                   + self.blurred_fit(x, canvas, schedule))
            return estimators.relaxed(fit, terms, presence)
        if e.kind == "vimco" and self.training:  # held-out batches carry no particles
            return estimators.vimco(inference, terms, self.where_prior_loc, self.where_prior_sd,
                                    e.particles)
        return estimators.reinforce(inference, terms, advantage, self.signal_scale(),
                                    schedule.reinforce_weight, e.reward_to_go)

    def blurred_fit(self, x: torch.Tensor, canvas: torch.Tensor, schedule: Schedule
                    ) -> torch.Tensor:
        """(R, B) schedule.blur_weight x how well the blurred canvas fits the blurred image
        (Gaussian, up to a constant; zero without model.blur_px). A window that misses a small
        digit gets no gradient from the sharp likelihood, since bilinear sampling only sees
        neighbouring pixels; under the blur, moving towards the digit already pays."""
        if self.blur is None or schedule.blur_weight == 0.0:
            return x.new_zeros(x.shape[:2])
        blurred = lambda image: self.blur @ image @ self.blur.T  # noqa: E731  (R, B, H, W)
        misfit = ((blurred(x) - blurred(canvas)) / schedule.likelihood_sd).pow(2)
        return schedule.blur_weight * (-0.5 * misfit).sum(dim=(-1, -2))

    def _advantage(self, signal: torch.Tensor, baseline: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(baseline target, advantage), both (R, B), with NVIL centring and normalisation.

        The running statistics are updated from the batch while training, per replica.
        """
        estimator = self.config.estimator
        if estimator.centre_signal:
            if self.training:
                self._moving_average(self.signal_mean, signal.mean(-1))
            signal = signal - self.signal_mean.unsqueeze(-1)
        advantage = signal - baseline
        if estimator.normalise_signal and self.training:
            self._moving_average(self.signal_var, advantage.var(-1))
        if self.training:
            self.signal_seen.fill_(True)
        return signal, advantage / self.signal_scale()

    def signal_scale(self) -> torch.Tensor | float:
        """(R, 1) NVIL normaliser of the advantage, or 1 without normalisation."""
        if not self.config.estimator.normalise_signal:
            return 1.0
        # Only shrink large signals (NVIL): dividing small ones up would amplify noise.
        return self.signal_var.sqrt().clamp(min=1.0).unsqueeze(-1)

    @torch.no_grad()
    def _moving_average(self, buffer: torch.Tensor, value: torch.Tensor) -> None:
        """Exponential moving average per replica; the first batch sets the value outright."""
        value = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        decay = self.config.estimator.signal_decay
        buffer.copy_(torch.where(self.signal_seen, decay * buffer + (1 - decay) * value, value))

    def _baseline_input(self, x: torch.Tensor, inference: Inference) -> torch.Tensor:
        R, B = x.shape[:2]
        parts = [x.reshape(R, B, -1)]
        if self.config.estimator.baseline_input == "image_and_z":
            # Continuous latents only: n is sampled given them, so the baseline stays unbiased.
            parts += [inference.z_what.detach().reshape(R, B, -1),
                      inference.z_where.detach().reshape(R, B, -1)]
        return torch.cat(parts, dim=-1)

