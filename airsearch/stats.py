"""Convergence rates as k/n with honest intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """k successes of n seeds, with a Wilson 95% interval (sound at k = 0, k = n, small n)."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __str__(self) -> str:
        return f"{self.k}/{self.n} = {self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def wilson(k: int, n: int, z: float = Z_95) -> Rate:
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(0, 0, 0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Rounding can leave a bound a hair inside k/n at k = 0 or k = n; the interval holds p.
    return Rate(k, n, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))
