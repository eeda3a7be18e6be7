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


ALPHA = 0.05
# A non-significant comparison whose interval still allows a difference this large is
# reported as too small to tell, not as "no difference".
NEGLIGIBLE = 0.25


@dataclass(frozen=True)
class Comparison:
    """Rate a minus rate b: Newcombe's 95% interval, Fisher's exact p and what it means."""

    difference: float
    low: float
    high: float
    p_value: float
    verdict: str  # better | worse | no difference beyond +-NEGLIGIBLE | too small to tell


def newcombe(a: Rate, b: Rate) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for a.value - b.value.

    Built from the two Wilson intervals, so it stays inside [-1, 1] and is sound at 0/n and
    n/n, where the textbook Wald interval collapses to a point.
    """
    if not a.n or not b.n:
        return -1.0, 1.0
    pa, pb = a.value, b.value
    low = pa - pb - math.sqrt((pa - a.low) ** 2 + (b.high - pb) ** 2)
    high = pa - pb + math.sqrt((a.high - pa) ** 2 + (pb - b.low) ** 2)
    return max(-1.0, low), min(1.0, high)


def fisher_p(a: Rate, b: Rate) -> float:
    """Two-sided Fisher exact p-value of the 2x2 table converged/not x a/b."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[a.k, a.n - a.k], [b.k, b.n - b.k]]).pvalue)


def compare(a: Rate, b: Rate) -> Comparison:
    low, high = newcombe(a, b)
    p = fisher_p(a, b) if a.n and b.n else 1.0
    if p < ALPHA:
        verdict = "better" if a.value > b.value else "worse"
    elif -NEGLIGIBLE < low and high < NEGLIGIBLE:
        verdict = f"no difference beyond +-{NEGLIGIBLE}"
    else:
        verdict = "too small to tell"
    return Comparison(a.value - b.value if a.n and b.n else float("nan"), low, high, p,
                      verdict)


def can_tell(n_a: int, n_b: int) -> bool:
    """Whether these seed counts can show any difference at ALPHA: all vs none is the
    strongest result they allow (3 vs 3 seeds cannot: p = 0.10)."""
    if not n_a or not n_b:
        return False
    return fisher_p(Rate(n_a, n_a, 0, 1), Rate(0, n_b, 0, 1)) < ALPHA
