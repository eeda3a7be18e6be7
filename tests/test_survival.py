"""Time to count: Kaplan-Meier over seeds, censored where a seed never reached the threshold."""

from __future__ import annotations

import math

import pytest

from airsearch.survival import SeedTime, kaplan_meier, logrank_p, seed_time

ACC = "eval/count_accuracy"


def rows(*accuracies, every=250):
    return [{"step": every * (i + 1), ACC: a} for i, a in enumerate(accuracies)]


def test_a_seed_reaches_at_its_first_evaluation_at_the_threshold():
    assert seed_time(rows(0.2, 0.96, 0.94, 0.97), ACC, 0.95) == SeedTime(500, 1000)
    assert seed_time(rows(0.2, 0.5), ACC, 0.95) == SeedTime(None, 500)
    assert seed_time(rows(0.2, math.nan), ACC, 0.95) == SeedTime(None, 500)


def test_without_censoring_the_curve_is_the_share_reached():
    curve = kaplan_meier([SeedTime(500, 3000), SeedTime(750, 3000), SeedTime(750, 3000),
                          SeedTime(1000, 3000)])
    assert curve.steps == [500, 750, 1000]
    assert curve.reached == pytest.approx([0.25, 0.75, 1.0])
    assert curve.median == 750 and curve.events == 4
    assert curve.share_by(600) == pytest.approx(0.25) and curve.share_by(100) == 0.0
    assert all(lo <= r <= hi for lo, r, hi in zip(curve.low, curve.reached, curve.high,
                                                   strict=True))


def test_a_censored_seed_leaves_the_risk_set_without_counting_as_reached():
    """Two of four seeds reach at 500 and 1000; one stops undecided at 750, one never reaches.
    At 1000 one of the two still at risk reaches: 1 - (1/2)(1/2) = 0.75, not 2/4."""
    curve = kaplan_meier([SeedTime(500, 3000), SeedTime(None, 750), SeedTime(1000, 3000),
                          SeedTime(None, 3000)])
    assert curve.share_by(500) == pytest.approx(0.25)
    assert curve.share_by(1000) == pytest.approx(1 - 0.75 * (1 / 2))
    assert curve.median == 1000


def test_no_seed_reached_has_no_median():
    curve = kaplan_meier([SeedTime(None, 3000)] * 3)
    assert curve.median is None and curve.median_text() == "not reached"
    assert curve.share_by(3000) == 0.0


def test_logrank_tells_a_clearly_faster_configuration():
    fast = [SeedTime(250, 3000)] * 8
    slow = [SeedTime(2000 + 100 * i, 3000) for i in range(8)]
    assert logrank_p(fast, slow) < 0.01
    assert logrank_p(fast, fast) > 0.5
    assert math.isnan(logrank_p([SeedTime(None, 10)], [SeedTime(None, 10)]))
