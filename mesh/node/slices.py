"""Requests merged into one batch and the batch cut back into its requests: each request's
outputs and labels, and its confidence and novelty over its rows (its least sure row decides).
Pure: numpy only."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from mesh.node.served import BatchScores, LocalAnswer
from mesh.typedefs import Feeds


def concatenate(requests: list[Feeds]) -> Feeds:
    """The feeds of requests that merge (same names, dtypes, trailing shapes) as one batch."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([feeds[name] for feeds in requests]) for name in requests[0]}


def rows_of(feeds: Feeds) -> int:
    array = next(iter(feeds.values()))
    return int(array.shape[0]) if array.ndim else 1


def request_answers(
    outputs: Feeds, scores: BatchScores, counts: Sequence[int], novelties: list[float] | None
) -> Iterator[LocalAnswer]:
    """Each request's answer out of its batch's, in order; ``counts`` are its rows."""
    confidences = scores.confidence.tolist()
    whole = len(counts) == 1
    total = len(confidences)
    parts = (
        []
        if whole
        else [
            (name, array, array.ndim > 0 and array.shape[0] == total)
            for name, array in outputs.items()
        ]
    )
    offset = 0
    for rows in counts:
        end = offset + rows
        if rows == 1:
            confidence = confidences[offset]
            novelty = novelties[offset] if novelties is not None else None
        else:
            # min() skips a NaN that is not first; a NaN row must make the request unsure.
            confidence = min(confidences[offset:end])
            if any(c != c for c in confidences[offset:end]):
                confidence = math.nan
            novelty = max(novelties[offset:end]) if novelties is not None else None
        yield LocalAnswer(
            outputs
            if whole
            else {
                name: array[offset:end] if rows_of_batch else array
                for name, array, rows_of_batch in parts
            },
            scores.labels[offset:end],
            confidence,
            novelty,
        )
        offset = end
