"""The interval bounds a rollout's gates judge by: one-sided 90% Wilson bounds of a share, and
Newcombe's bounds of the difference of two shares (a canary's and its baseline's)."""

from __future__ import annotations

import math

#: one-sided 90% for the agreement's Wilson bound.
Z_90 = 1.2816


def wilson_upper(agreed: int, total: int, z: float = Z_90) -> float:
    """Upper bound of the agreement's one-sided 90% Wilson interval: the best the true
    agreement could plausibly be, given ``agreed`` of ``total``."""
    if total <= 0:
        return 1.0
    p = agreed / total
    denominator = 1 + z * z / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return min(1.0, (centre + spread) / denominator)


def wilson_lower(hits: int, total: int, z: float = Z_90) -> float:
    """Lower bound of the one-sided 90% Wilson interval of ``hits`` of ``total``: the least
    the true share could plausibly be. A rate gate fails only when even this is over its
    bound, so one slow or failed request among a few dozen does not roll a version back."""
    if total <= 0:
        return 0.0
    return max(0.0, 1.0 - wilson_upper(total - hits, total, z))


def difference_upper(hits: int, total: int, base_hits: int, base_total: int) -> float:
    """Upper bound of the one-sided 90% interval of a canary's share minus the baseline's
    (Newcombe's hybrid score interval, built from the two Wilson intervals): the most the
    canary could plausibly be ahead. A baseline measured on few samples is uncertain too; a
    canary compared with its point estimate alone failed a good version when a baseline of 16
    answers had agreed on all 16."""
    p, q = hits / total, base_hits / base_total
    return (
        p - q + math.hypot(wilson_upper(hits, total) - p, q - wilson_lower(base_hits, base_total))
    )


def difference_lower(hits: int, total: int, base_hits: int, base_total: int) -> float:
    """Lower bound of the same interval: the least the canary's share could plausibly be over
    the baseline's (the baseline's most over the canary's, negated)."""
    return -difference_upper(base_hits, base_total, hits, total)


def rounded(x: float | None) -> float | None:
    """A share or bound as records and verdicts state it."""
    return None if x is None else round(x, 4)
