"""The outcome rule for a finished seed, and Wilson intervals for convergence rates."""

from __future__ import annotations

import pytest

from airsearch.evaluation.outcomes import COLLAPSE_SHARE, OUTCOMES, converged, label
from airsearch.stats import Rate, can_tell, compare, fisher_p, newcombe, wilson

BASE = dict(diverged=False, accuracies=[0.5, 0.6], threshold=0.95, hold=1, share_zero=0.1,
            share_max=0.1, mean_count=1.0, mean_true=1.0)


def _label(**changes):
    return label(**{**BASE, **changes})


def test_diverged_wins_over_everything():
    """A diverged seed is 'diverged' even if its accuracy was high."""
    assert _label(diverged=True, accuracies=[1.0]) == "diverged"


def test_converged():
    """Accuracy at the threshold in the last evaluation is 'converged'."""
    assert _label(accuracies=[0.2, 0.95]) == "converged"
    assert _label(accuracies=[0.2, 0.949]) != "converged"


def test_converged_needs_hold():
    """With hold=2 both of the last two evaluations must reach the threshold."""
    assert _label(accuracies=[0.5, 0.97], hold=2) != "converged"
    assert _label(accuracies=[0.1, 0.96, 0.97], hold=2) == "converged"
    assert not converged([0.99], 0.95, 2)  # too few evaluations
    assert not converged([], 0.95, 1)


def test_fade_in_is_not_converged():
    """Peaking and then drifting below the threshold is not converged (only the end counts)."""
    assert _label(accuracies=[0.99, 0.99, 0.7]) != "converged"


def test_collapsed_to_zero():
    """>= COLLAPSE_SHARE of images read as 0 objects is 'collapsed_to_zero'."""
    assert _label(share_zero=COLLAPSE_SHARE, mean_count=0.1) == "collapsed_to_zero"
    assert _label(share_zero=1.0, share_max=0.0) == "collapsed_to_zero"


def test_collapsed_to_max():
    """>= COLLAPSE_SHARE of images read as max_steps objects is 'collapsed_to_max'."""
    assert _label(share_max=0.95, mean_count=2.9) == "collapsed_to_max"


def test_below_collapse_share_is_counting_error():
    """Just under the collapse share falls through to over/under-counting."""
    assert _label(share_zero=COLLAPSE_SHARE - 0.01, mean_count=0.2) == "under_counting"
    assert _label(share_max=COLLAPSE_SHARE - 0.01, mean_count=2.5) == "over_counting"


def test_over_and_under_counting():
    """Mean inferred count above the true mean is over-counting, otherwise under-counting."""
    assert _label(mean_count=1.3) == "over_counting"
    assert _label(mean_count=0.7) == "under_counting"
    assert _label(mean_count=1.0) == "under_counting"


def test_every_label_is_an_outcome():
    """The rule can produce every name in OUTCOMES, and only those."""
    produced = {
        _label(diverged=True), _label(accuracies=[1.0]), _label(share_zero=1.0),
        _label(share_max=1.0), _label(mean_count=2.0), _label(mean_count=0.5),
    }
    assert produced == set(OUTCOMES)


# ------------------------------------------------------------------------------ Wilson

@pytest.mark.parametrize("k, n, low, high, tol", [
    (1, 5, 0.04, 0.62, 0.005),
    (10, 10, 0.72, 1.00, 0.005),
    (7, 10, 0.397, 0.892, 0.0005),
    (5, 10, 0.2366, 0.7634, 0.0005),
])
def test_wilson_known_values(k, n, low, high, tol):
    """Wilson 95% intervals match published values."""
    rate = wilson(k, n)
    assert rate.low == pytest.approx(low, abs=tol)
    assert rate.high == pytest.approx(high, abs=tol)
    assert rate.k == k and rate.n == n
    assert rate.value == pytest.approx(k / n)


def test_wilson_half_width_at_half():
    """At rate 0.5 with 10 seeds the half-width is about 0.26."""
    rate = wilson(5, 10)
    assert (rate.high - rate.low) / 2 == pytest.approx(0.26, abs=0.01)


def test_wilson_edges():
    """k=0 starts at 0, k=n ends at 1 (up to rounding), and both are non-degenerate."""
    zero, full = wilson(0, 10), wilson(10, 10)
    assert zero.low == 0.0 and 0.2 < zero.high < 0.35
    assert full.high == 1.0 and zero.low == 0.0 and 0.65 < full.low < 0.8
    assert all(wilson(n, n).high >= 1.0 and wilson(0, n).low <= 0.0 for n in range(1, 40))
    assert wilson(0, 10).high == pytest.approx(1 - wilson(10, 10).low)
    empty = wilson(0, 0)
    assert (empty.low, empty.high) == (0.0, 1.0)


@pytest.mark.parametrize("k, n", [(-1, 5), (6, 5), (1, 0)])
def test_wilson_invalid(k, n):
    """k outside 0..n is an error naming k and n."""
    with pytest.raises(ValueError, match="k="):
        wilson(k, n)


def test_wilson_contains_estimate_and_narrows():
    """The interval contains k/n and narrows as n grows at a fixed rate."""
    widths = []
    for n in (10, 40, 160):
        rate = wilson(n // 2, n)
        assert rate.low < rate.value < rate.high
        widths.append(rate.high - rate.low)
    assert widths[0] > widths[1] > widths[2]


def test_rate_str():
    """Rates print as k/n = value [low, high]."""
    assert str(wilson(1, 5)) == "1/5 = 0.20 [0.04, 0.62]"
    assert isinstance(wilson(1, 5), Rate)


@pytest.mark.parametrize("a, b, low, high", [
    ((56, 70), (48, 80), 0.0524, 0.3339),  # Newcombe (1998), table II, method 10
    ((9, 10), (3, 10), 0.1705, 0.8090),
    ((5, 56), (0, 29), -0.0381, 0.1926),
])
def test_newcombe_known_values(a, b, low, high):
    assert newcombe(wilson(*a), wilson(*b)) == pytest.approx((low, high), abs=6e-4)


def test_fisher_known_values():
    # Fisher's tea tasting: 3 of 4 right vs 1 of 4, two-sided p = 34/70.
    assert fisher_p(wilson(3, 4), wilson(1, 4)) == pytest.approx(34 / 70)
    assert fisher_p(wilson(4, 4), wilson(0, 4)) == pytest.approx(2 / 70)
    assert fisher_p(wilson(2, 4), wilson(2, 4)) == pytest.approx(1.0)


def test_compare_verdicts():
    assert compare(wilson(8, 8), wilson(1, 8)).verdict == "better"
    assert compare(wilson(1, 8), wilson(8, 8)).verdict == "worse"
    assert compare(wilson(3, 4), wilson(1, 4)).verdict == "too small to tell"
    assert compare(wilson(200, 200), wilson(199, 200)).verdict.startswith("no difference")
    same = compare(wilson(2, 4), wilson(2, 4))
    assert same.difference == 0 and same.low < 0 < same.high


def test_can_tell_needs_enough_seeds():
    assert not can_tell(3, 3)  # all vs none: p = 0.10
    assert can_tell(4, 4)  # p = 0.029
    assert not can_tell(0, 4)
