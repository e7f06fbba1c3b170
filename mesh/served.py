"""A model as a tier serves it: its signature checks, its runner, confidence, novelty and drift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mesh import confidence
from mesh.confidence import ConfidenceKind
from mesh.errors import InvalidArgumentError, ResourceExhaustedError
from mesh.policy import Thresholds
from mesh.wire import Array, dtype_name

if TYPE_CHECKING:
    from mesh.drift import DriftMonitor
    from mesh.novelty import NoveltyScorer
    from mesh.runtime import ModelRunner, TensorSpec


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    outputs: dict[str, Array]
    labels: list[int]
    #: lowest confidence over the rows.
    confidence: float
    #: highest novelty over the rows, when the model has reference statistics.
    novelty: float | None
    #: confidence of each row.
    row_confidences: npt.NDArray[np.floating[Any]] | None = None


@dataclass(eq=False)
class ServedModel:
    name: str
    version: str
    runner: ModelRunner
    inputs: list[TensorSpec]
    scored_output: str
    confidence_kind: ConfidenceKind
    thresholds: Thresholds
    novelty: NoveltyScorer | None = None
    drift: DriftMonitor | None = None
    max_rows: int = 256
    max_request_bytes: int = 4 * 1024 * 1024

    def validate(self, inputs: dict[str, Array]) -> dict[str, Array]:
        """The feeds for the model, or a typed error naming what is wrong with the request."""
        expected = [spec.name for spec in self.inputs]
        if len(self.inputs) == 1 and len(inputs) == 1:
            feeds = {self.inputs[0].name: next(iter(inputs.values()))}
        else:
            missing = sorted(set(expected) - set(inputs))
            extra = sorted(set(inputs) - set(expected))
            if missing or extra:
                raise InvalidArgumentError(
                    f"model {self.name} takes inputs {expected}; "
                    f"missing {missing}, unexpected {extra}"
                )
            feeds = dict(inputs)
        total = 0
        for spec in self.inputs:
            array = feeds[spec.name]
            if dtype_name(array.dtype) != spec.dtype:
                raise InvalidArgumentError(
                    f"input {spec.name!r} of model {self.name} must be {spec.dtype}, "
                    f"got {dtype_name(array.dtype)}"
                )
            shape = _shape_text(spec.shape)
            if array.ndim != len(spec.shape) or any(
                want is not None and want != got
                for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidArgumentError(
                    f"input {spec.name!r} of model {self.name} must have shape {shape}, "
                    f"got {list(array.shape)}"
                )
            rows = array.shape[0] if array.ndim else 1
            if rows == 0:
                raise InvalidArgumentError(f"input {spec.name!r} has no rows")
            if rows > self.max_rows:
                raise ResourceExhaustedError(
                    f"input {spec.name!r} has {rows} rows; model {self.name} takes at most "
                    f"{self.max_rows} a request: split it"
                )
            total += array.nbytes
        if total > self.max_request_bytes:
            raise ResourceExhaustedError(
                f"request inputs are {total} bytes; model {self.name} takes at most "
                f"{self.max_request_bytes} a request"
            )
        return feeds

    async def infer(self, feeds: dict[str, Array]) -> dict[str, Array]:
        return await self.runner.infer(feeds)

    def assess(self, feeds: dict[str, Array], outputs: dict[str, Array]) -> LocalAnswer:
        probabilities = outputs.get(self.scored_output)
        if probabilities is None:
            raise InvalidArgumentError(
                f"model {self.name} has no output {self.scored_output!r} to score"
            )
        scores = confidence.score(probabilities, self.confidence_kind)
        novelty: float | None = None
        if self.novelty is not None:
            x = next(iter(feeds.values()))
            novelty = float(np.max(self.novelty.score(np.asarray(x, dtype=np.float64))))
        return LocalAnswer(
            outputs=outputs,
            labels=confidence.labels_of(probabilities),
            confidence=float(np.min(scores)),
            novelty=novelty,
            row_confidences=scores,
        )

    def observe_drift(self, feeds: dict[str, Array], local: LocalAnswer) -> None:
        """Add a request's rows to the drift window (O(rows)); a no-op without a reference."""
        if self.drift is not None and local.row_confidences is not None:
            self.drift.observe(next(iter(feeds.values())), local.row_confidences)


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
