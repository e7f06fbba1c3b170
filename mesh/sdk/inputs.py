"""What a caller hands the SDK, checked and shaped the one way every request and event takes:
its tensors, the names it addresses (models, tiers, sources) and its human-review choice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mesh.errors import InvalidArgumentError
from mesh.topology import parameters, subjects
from mesh.typedefs import Array

#: name a single array is sent under; a single-input model takes it whatever its input's name.
DEFAULT_INPUT = "input"


def tensors_of(inputs: Array | Mapping[str, Any]) -> dict[str, Array]:
    """A request's tensors: a mapping of name to array, or one array under ``DEFAULT_INPUT``."""
    if type(inputs) is np.ndarray:  # the common case, without the Mapping ABC's check
        return {DEFAULT_INPUT: inputs}
    if isinstance(inputs, Mapping):
        return {name: np.asarray(value) for name, value in inputs.items()}
    return {DEFAULT_INPUT: np.asarray(inputs)}


def human_review_parameter(value: str) -> dict[str, Any]:
    """The request parameter of a caller's ``human_review`` (a typed error for a bad one)."""
    from mesh.review.records import check_human_review

    return {parameters.HUMAN_REVIEW: check_human_review(value).value}


def checked_token(value: str, what: str) -> str:
    try:
        return subjects.check_token(value, what)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
