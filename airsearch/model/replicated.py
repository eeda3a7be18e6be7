"""Layers whose parameters carry a leading replica dimension R.

R independent AIR replicas (one per seed) run as one batched computation: every weight is
stored as (R, in, out) and applied with one batched matmul, so R seeds cost roughly one
op per layer instead of R. Replicas never share a parameter, so the gradient of a summed
loss with respect to replica r's slice is exactly replica r's own gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def activation(name: str) -> nn.Module:
    return {"elu": nn.ELU(), "relu": nn.ReLU()}[name]


class ReplicatedLinear(nn.Module):
    """y[r] = x[r] @ W[r] + b[r], with PyTorch's default nn.Linear init per replica."""

    def __init__(self, replicas: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(replicas, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(replicas, 1, out_features))

    def reset_parameters(self, generators: list[torch.Generator]) -> None:
        """Kaiming-uniform like nn.Linear, drawn from each replica's own generator."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            for r, gen in enumerate(generators):
                self.weight[r].uniform_(-bound, bound, generator=gen)
                self.bias[r].uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (R, N, in) -> (R, N, out)
        return torch.baddbmm(self.bias, x, self.weight)


class ReplicatedMLP(nn.Module):
    """depth hidden layers of `width` units, then a linear output layer (no output activation)."""

    def __init__(self, replicas: int, in_features: int, width: int, depth: int, out_features: int,
                 act: str) -> None:
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.hidden = nn.ModuleList(ReplicatedLinear(replicas, a, b)
                                    for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out = ReplicatedLinear(replicas, sizes[-1], out_features)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)


class ReplicatedLSTMCell(nn.Module):
    """An LSTM cell with the four gates fused into one batched matmul per step."""

    def __init__(self, replicas: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gates = ReplicatedLinear(replicas, input_size + hidden_size, 4 * hidden_size)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state  # (R, N, H) each
        i, f, g, o = self.gates(torch.cat([x, h], dim=-1)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def softplus_inverse(y: float) -> float:
    """x with softplus(x) = y, to set a bias so an output starts at a chosen positive value."""
    return y + math.log(-math.expm1(-y))

