"""How a finished seed is labelled: the failure modes of AIR, read off held-out counts.

The rule, applied to the final evaluation(s) in this order:
  diverged           the loss or a gradient became nan/inf (the replica was frozen there);
  converged          held-out count accuracy >= eval.threshold in each of the last eval.hold
                     evaluations;
  collapsed_to_zero  >= COLLAPSE_SHARE of held-out images are read as 0 objects;
  collapsed_to_max   >= COLLAPSE_SHARE of held-out images are read as max_steps objects;
  over_counting      otherwise, if the mean inferred count exceeds the mean true count;
  under_counting     otherwise.

With eval.verdicts a seed leaves training once its outcome is decided (`decided`): diverged at
once, converged after eval.decide_converged evaluations at the threshold, collapsed after
eval.decide_collapsed evaluations read as collapsed (0: never). It is labelled by the same
rule at its last evaluation.
"""

from __future__ import annotations

OUTCOMES = ("converged", "collapsed_to_zero", "collapsed_to_max", "over_counting",
            "under_counting", "diverged")
CONVERGED, DIVERGED = OUTCOMES[0], OUTCOMES[-1]
ERROR = "error"  # not a training outcome: the configuration failed before any result
ACCURACY = "eval/count_accuracy"  # the held-out metric the rule reads, logged under this name
SHARE_ZERO, SHARE_MAX = "eval/share_zero", "eval/share_max"  # images read as 0 / max objects

COLLAPSE_SHARE = 0.9


def converged(accuracies: list[float], threshold: float, hold: int) -> bool:
    """True when the last `hold` accuracies all reach the threshold."""
    return len(accuracies) >= hold and all(a >= threshold for a in accuracies[-hold:])


def label(*, diverged: bool, accuracies: list[float], threshold: float, hold: int,
          share_zero: float, share_max: float, mean_count: float, mean_true: float) -> str:
    if diverged:
        return "diverged"
    if converged(accuracies, threshold, hold):
        return "converged"
    if share_zero >= COLLAPSE_SHARE:
        return "collapsed_to_zero"
    if share_max >= COLLAPSE_SHARE:
        return "collapsed_to_max"
    return "over_counting" if mean_count > mean_true else "under_counting"


def decided(*, diverged: bool, history: list[dict[str, float]], threshold: float,
            converge_evals: int, collapse_evals: int) -> bool:
    """True when further training cannot change the seed's label under the verdict rule:
    it diverged, reached the threshold in each of its last `converge_evals` evaluations, or
    was read as collapsed in each of its last `collapse_evals` (0: never decided collapsed)."""
    if diverged:
        return True
    if converged([row[ACCURACY] for row in history], threshold, converge_evals):
        return True
    if collapse_evals == 0 or len(history) < collapse_evals:
        return False
    return all(max(row[SHARE_ZERO], row[SHARE_MAX]) >= COLLAPSE_SHARE
               for row in history[-collapse_evals:])
