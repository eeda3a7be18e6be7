"""One optimiser over stacked replica parameters, kept per-replica where it matters.

Adam and RMSProp are elementwise, so replicas never mix inside them. Three things are not
elementwise and are done here per replica: gradient clipping (a norm over one replica's
slices), detecting non-finite gradients, and freezing a replica that diverged so that its
Adam momentum cannot keep moving it while the others train on.
"""

from __future__ import annotations

import torch
from torch import nn

from airsearch.config import TrainConfig
from airsearch.model.air import AIR


def build_optimizer(model: AIR, train: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the baseline's at train.baseline_lr, everything else at train.lr.

    The groups are named and tests assert which parameters each holds: a parameter in the
    wrong group trains at the wrong rate without any error.
    """
    groups = model.parameter_groups()
    param_groups = [
        {"name": "model", "params": groups["model"], "lr": train.lr, "initial_lr": train.lr},
        {"name": "baseline", "params": groups["baseline"], "lr": train.baseline_lr,
         "initial_lr": train.baseline_lr},
    ]
    if train.optimizer == "adam":
        return torch.optim.Adam(param_groups, foreach=True)
    return torch.optim.RMSprop(param_groups, momentum=0.9, foreach=True)


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every group's rate from its configured value (kept as 'initial_lr') by `factor`
    (airsearch.schedules.learning_rate_factor of the step)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    rows = []
    for group in optimizer.param_groups:
        count = sum(p.numel() for p in group["params"]) // max(1, group["params"][0].shape[0])
        rows.append(f"{group['name']}: {len(group['params'])} tensors, {count:,} parameters "
                    f"per replica, lr {group['lr']:g}")
    return "; ".join(rows)


def replica_grad_norms(params: list[nn.Parameter]) -> torch.Tensor:
    """(R,) gradient L2 norm of each replica over `params` (nan/inf if any entry is)."""
    norms = [torch.linalg.vector_norm(p.grad.flatten(1), dim=1) for p in params
             if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


class ReplicaGuard:
    """Clips each replica's gradient, and freezes replicas whose loss or gradient is not finite."""

    def __init__(self, model: AIR, grad_clip: float) -> None:
        groups = model.parameter_groups()
        self.model_params, self.all_params = groups["model"], list(model.parameters())
        self.baseline_params = groups["baseline"]
        self._clipped = {id(p) for p in self.model_params}
        self.grad_clip = grad_clip
        self.active = torch.ones(model.replicas, dtype=torch.bool)
        self._frozen: list[torch.Tensor] | None = None

    def load_active(self, active: torch.Tensor) -> None:
        """Restore which replicas are frozen (after the weights: they are what stays frozen)."""
        self.active = active.clone()
        self._frozen = None
        if not bool(self.active.all()):
            self._frozen = [p.detach().clone() for p in self.all_params]

    def before_step(self, losses: torch.Tensor) -> torch.Tensor:
        """Clip and sanitise gradients; return the (R,) mask of replicas that just diverged."""
        norms = replica_grad_norms(self.model_params)
        # A non-finite entry anywhere makes its replica's norm non-finite: one check covers all.
        finite = (torch.isfinite(losses.detach()) & torch.isfinite(norms)
                  & torch.isfinite(replica_grad_norms(self.baseline_params))).cpu()
        newly = self.active & ~finite
        if newly.any():
            self.active &= ~newly
            self._frozen = [p.detach().clone() for p in self.all_params]
        keep = self.active.to(norms.device)
        scale = torch.ones_like(norms)
        if self.grad_clip > 0:
            scale = torch.clamp(self.grad_clip / (norms + 1e-6), max=1.0)
        all_active = bool(self.active.all())
        if all_active and bool((scale == 1.0).all()):
            return newly  # every replica under the clip: most steps end here
        scale = torch.where(keep, torch.nan_to_num(scale), torch.zeros_like(scale))
        for p in self.all_params:
            if p.grad is None:
                continue
            factor = scale if id(p) in self._clipped else keep.to(p.dtype)
            p.grad.mul_(factor.view(-1, *[1] * (p.dim() - 1)))
            if not all_active:  # a frozen replica's nan * 0 is still nan
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        return newly

    def after_step(self) -> None:
        """Undo the optimiser's update (momentum) on frozen replicas."""
        if self._frozen is None:
            return
        frozen = ~self.active
        with torch.no_grad():
            for p, saved in zip(self.all_params, self._frozen, strict=True):
                p[frozen.to(p.device)] = saved[frozen.to(p.device)]
