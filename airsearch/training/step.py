"""One training step of R replicas, and how many replicas fit in memory at once.

Replica r uses only generators seeded from its own seed (init, data order, sampling noise),
so it follows the same trajectory it would follow alone.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from airsearch.config import AIRConfig
from airsearch.model.air import AIR
from airsearch.model.terms import LossTerms, Noise
from airsearch.schedules import learning_rate_factor, schedule_at
from airsearch.training.optim import ReplicaGuard, build_optimizer, set_learning_rates

DATA_STREAM, NOISE_STREAM = 1, 2  # per-seed generator streams, apart from the init stream


def replicas_that_fit(config: AIRConfig, device: torch.device) -> int:
    """How many replicas to train at once, from a rough per-replica memory estimate.

    Memory grows linearly in R: parameters and Adam state (about 16 bytes per parameter) plus
    activations kept for the backward pass, dominated by the K written canvases and the
    intermediate images of writing them (about 40 bytes per canvas pixel, per image and step).
    """
    m, d = config.model, config.data
    params = (d.canvas_size ** 2 * (m.mlp_width + config.estimator.baseline_width)
              + 4 * (m.mlp_width + m.z_what_size + 3 + m.lstm_size) * m.lstm_size
              + 2 * m.glimpse_size ** 2 * m.mlp_width + 8 * m.mlp_width ** 2)
    samples = config.train.batch_size * config.estimator.particles
    activations = samples * m.max_steps * d.canvas_size ** 2 * 40
    per_replica = 16 * params + activations
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, int(0.5 * free // per_replica))


class ReplicaStep:
    """One optimisation step of R replicas: batch and noise per replica, loss, guard, update.

    Shared by the training loop and the benchmarks, so what is timed is what trains.
    """

    def __init__(self, config: AIRConfig, seeds: list[int], train_images: torch.Tensor) -> None:
        self.config, self.seeds = config, seeds
        device = train_images.device
        self.train_images = train_images  # (N, H, W) uint8 on the training device
        self.model = AIR(config, seeds).to(device)
        self.optimizer = build_optimizer(self.model, config.train)
        self.guard = ReplicaGuard(self.model, config.train.grad_clip)
        self.data_gens = [torch.Generator(device=device).manual_seed(s * 1000 + DATA_STREAM)
                          for s in seeds]
        self.noise_gens = [torch.Generator(device=device).manual_seed(s * 1000 + NOISE_STREAM)
                           for s in seeds]

    def state_dict(self) -> dict[str, Any]:
        """Everything that moves during training: weights, optimiser, guard, generators."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "active": self.guard.active.clone(),
                "data_gens": [g.get_state() for g in self.data_gens],
                "noise_gens": [g.get_state() for g in self.noise_gens]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.guard.load_active(state["active"])
        for gens, saved in ((self.data_gens, state["data_gens"]),
                            (self.noise_gens, state["noise_gens"])):
            for gen, gen_state in zip(gens, saved, strict=True):
                gen.set_state(gen_state)

    def subset(self, keep: list[int]) -> ReplicaStep:
        """The replicas at positions `keep` alone, as they are now: a decided seed leaves the
        batch and its compute is freed. A resumed run rebuilds the same smaller step from its
        checkpoint, so both go on bitwise alike."""
        smaller = ReplicaStep(self.config, [self.seeds[r] for r in keep], self.train_images)
        smaller.load_state_dict(select_replicas(self.state_dict(), smaller, keep))
        return smaller

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train step `step` (0-based); returns (mean ELBO per replica, newly diverged mask)."""
        terms = self.forward(step)
        losses = terms.total
        self.backward(losses)
        return terms.elbo.mean(1).detach(), self.update(step, losses)

    # Three phases as separate methods, so benchmarks/speed.py can time each one.
    def forward(self, step: int) -> LossTerms:
        """Sample each replica's batch and noise, infer, and compute the loss terms."""
        config, device = self.config, self.train_images.device
        B = config.train.batch_size
        index = torch.stack([torch.randint(len(self.train_images), (B,), generator=g,
                                           device=device) for g in self.data_gens])  # (R, B)
        x = self.train_images[index].to(torch.float32).div_(255.0)  # (R, B, H, W)
        # (R, S*B, H, W): particle s of image b at s*B + b (estimator.particles)
        if config.estimator.particles > 1:
            x = x.repeat(1, config.estimator.particles, 1, 1)
        noise = Noise.draw(self.noise_gens, x.shape[1], config.model.max_steps,
                           config.model.z_what_size, device)
        return self.model.loss_terms(x, self.model.infer(x, noise), schedule_at(config, step))

    def backward(self, losses: torch.Tensor) -> None:
        """Gradients of the active replicas' summed losses (a frozen replica's loss is left out).

        Gradients are dropped, not zeroed, before: backward then writes each one once instead
        of zero-filling it and adding into it. Every parameter gets a gradient at every step,
        so the training is bitwise the same, 4-7% faster per step on a 2-core CPU.
        """
        active = self.guard.active.to(losses.device)
        self.optimizer.zero_grad(set_to_none=True)
        torch.where(active, losses, torch.zeros_like(losses)).sum().backward()

    def update(self, step: int, losses: torch.Tensor) -> torch.Tensor:
        """Guard (clip, freeze the newly diverged), then the optimiser step; returns that mask."""
        set_learning_rates(self.optimizer, learning_rate_factor(self.config.train, step))
        newly = self.guard.before_step(losses)
        self.optimizer.step()
        self.guard.after_step()
        return newly


def select_replicas(state: dict[str, Any], smaller: ReplicaStep, keep: list[int]
                    ) -> dict[str, Any]:
    """`state` (ReplicaStep.state_dict of R replicas) cut down to the replicas `keep`.

    A tensor of the model is per replica where its shape differs from the smaller model's
    (only the leading R differs); the optimiser's moments are per replica like their
    parameters, its step counts are scalars."""
    index = torch.tensor(keep)
    template = smaller.model.state_dict()
    model = {key: value if value.shape == template[key].shape else value[index.to(value.device)]
             for key, value in state["model"].items()}
    replicas = state["active"].shape[0]

    def per_replica(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == replicas:
            return value[index.to(value.device)]
        return value.clone() if isinstance(value, torch.Tensor) else value  # never shared

    optimizer = {"param_groups": state["optimizer"]["param_groups"],
                 "state": {i: {name: per_replica(v) for name, v in entry.items()}
                           for i, entry in state["optimizer"]["state"].items()}}
    return {"model": model, "optimizer": optimizer, "active": state["active"][index],
            "data_gens": [state["data_gens"][r] for r in keep],
            "noise_gens": [state["noise_gens"][r] for r in keep]}
