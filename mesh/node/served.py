"""A model as a tier serves it: its signature checks, its runner, and its scores over a batch.

Everything here works on whole batches: one model call, then confidence, labels, novelty and
drift over every row at once (one numpy call each), because per-request numpy calls cost more
than the model itself at the edge.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mesh.errors import InternalError, InvalidArgumentError, ResourceExhaustedError
from mesh.node.evidence import Evidence
from mesh.node.policy import Thresholds
from mesh.scoring import confidence
from mesh.scoring.confidence import ConfidenceKind
from mesh.typedefs import AnyFloats, Array, Feeds, Floats
from mesh.wire import dtype_name

if TYPE_CHECKING:
    from mesh.energy.ledger import CallMeter
    from mesh.node.fused import FusedOutputs
    from mesh.node.runtime import GraphTensor, ModelRunner
    from mesh.scoring.drift import DriftMonitor
    from mesh.scoring.novelty import NoveltyScorer


@dataclass(slots=True)
class LocalAnswer:
    """What this tier's model says of one request (plain, not frozen: built per request; see
    ``mesh.wire.messages``)."""

    outputs: dict[str, Array]
    labels: list[int]
    #: lowest confidence over the rows (NaN never passes for confident: see ``policy``).
    confidence: float
    #: highest novelty over the rows, when the model has reference statistics.
    novelty: float | None


@dataclass(slots=True)
class BatchScores:
    """Scores of every row of a batch."""

    labels: list[int]
    confidence: AnyFloats
    novelty: Floats | None


@dataclass(eq=False)
class ServedModel:
    name: str
    version: str
    runner: ModelRunner
    inputs: list[GraphTensor]
    scored_output: str
    confidence_kind: ConfidenceKind
    thresholds: Thresholds
    novelty: NoveltyScorer | None = None
    drift: DriftMonitor | None = None
    max_rows: int = 256
    max_request_bytes: int = 4 * 1024 * 1024
    #: most rows run as one model call (the batching settings' ``max_batch_size``).
    max_batch_rows: int = 32
    #: batches of this model running off the event loop now (a swap waits for them).
    in_flight: int = 0
    #: whether any two validated requests merge into one batch: every input has a row dimension
    #: and fixed trailing dimensions, so validation already proved their signatures equal.
    always_merges: bool = False
    #: share of confident answers also sent to the tier above, after the reply, to measure
    #: agreement with it (the audit; ``mesh.node.evidence``).
    audit_rate: float = 0.0
    #: outputs the model's graph computes the scores in (``mesh.node.fused``); None: numpy does.
    fused: FusedOutputs | None = None
    #: whether a request alone in its batch runs before its inputs are checked for NaN and
    #: infinity, checked after only when its fused novelty is not finite: that novelty is
    #: non-finite whenever they are (``fused.flags_non_finite``, tried at load).
    checks_inputs_after: bool = False
    #: class names by class id (the manifest's ``labels``): what a reviewer's label may be.
    classes: tuple[str, ...] = ()
    #: the energy ledger's count of this model's CPU time per call (None: no ledger).
    meter: CallMeter | None = None

    def __post_init__(self) -> None:
        self.evidence = Evidence()
        self.always_merges = all(
            len(spec.shape) >= 1 and all(d is not None for d in spec.shape[1:])
            for spec in self.inputs
        )
        self._idle = asyncio.Event()
        self._idle.set()
        only = self.inputs[0] if len(self.inputs) == 1 else None
        fixed = only is not None and self.always_merges and only.dtype not in ("str", "object")
        #: the one input's name, dtype and trailing shape, when validation can take a fast path.
        self._single = (
            (only.name, np.dtype(only.dtype), tuple(only.shape[1:])) if only and fixed else None
        )

    def validate(self, inputs: dict[str, Array]) -> Feeds:
        """The feeds for the model, or a typed error naming what is wrong with the request."""
        single = self._single
        if single is not None and len(inputs) == 1:
            # One input, fixed trailing shape: the common case in a few comparisons.
            array = next(iter(inputs.values()))
            name, dtype, trailing = single
            if (
                array.dtype == dtype
                and array.shape[1:] == trailing
                and 0 < array.shape[0] <= self.max_rows
                and array.nbytes <= self.max_request_bytes
            ):
                return {name: array}
        return self._validate_checked(inputs)

    def _validate_checked(self, inputs: dict[str, Array]) -> Feeds:
        expected = [spec.name for spec in self.inputs]
        if len(self.inputs) == 1 and len(inputs) == 1:
            feeds = {self.inputs[0].name: next(iter(inputs.values()))}
        else:
            missing = sorted(set(expected) - set(inputs))
            extra = sorted(set(inputs) - set(expected))
            if missing or extra:
                raise InvalidArgumentError(
                    f"model {self.name} takes inputs {expected}; "
                    f"missing {missing}, unexpected {[name[:64] for name in extra[:8]]}"
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
            if array.ndim != len(spec.shape) or any(
                want is not None and want != got
                for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidArgumentError(
                    f"input {spec.name!r} of model {self.name} must have shape "
                    f"{_shape_text(spec.shape)}, got {list(array.shape)}"
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

    def finite_rows(self, feeds: Feeds) -> npt.NDArray[np.bool_] | None:
        """Per row, whether every float input value is finite; None when all are (the usual
        case, checked with one call per input)."""
        bad: npt.NDArray[np.bool_] | None = None
        for array in feeds.values():
            if array.dtype.kind != "f" or array.ndim == 0:
                continue
            if np.isfinite(array).all():
                continue
            rows_bad = np.asarray(~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1))
            bad = rows_bad if bad is None else bad | rows_bad
        return None if bad is None else ~bad

    def run(self, feeds: Feeds) -> Feeds:
        """One model call on the event loop's thread (cheap models; see ``runs_inline``); one
        in the meter's ``every`` is timed by the thread's CPU clock."""
        meter = self.meter
        if meter is None or not meter.wants_timing():
            return self.runner.run_sync(feeds)
        started = time.thread_time()
        try:
            return self.runner.run_sync(feeds)
        finally:
            meter.timed_call(time.thread_time() - started)

    def runs_inline(self, rows: int) -> bool:
        return self.runner.runs_inline(rows)

    async def run_in_worker(self, feeds: Feeds) -> Feeds:
        self.in_flight += 1
        self._idle.clear()
        try:
            if self.meter is None:
                return await self.runner.run_in_worker(feeds)
            outputs, seconds = await self.runner.run_in_worker_timed(feeds)
            self.meter.worker_call(seconds)
            return outputs
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until no batch of this model runs in its worker."""
        await self._idle.wait()

    def score(self, feeds: Feeds, outputs: Feeds) -> BatchScores:
        """Labels, confidence and novelty of every row: taken out of ``outputs`` when the graph
        computed them (they are not the model's outputs to answer with), else one numpy call
        each."""
        fused = self.fused
        if fused is not None and fused.confidence in outputs:
            scores = outputs.pop(fused.confidence)
            labels: list[int] = outputs.pop(fused.labels).tolist()
            novel = outputs.pop(fused.novelty) if fused.novelty is not None else None
            return BatchScores(labels, scores, novel if self.novelty is not None else None)
        probabilities = outputs.get(self.scored_output)
        if probabilities is None:
            # The model's configuration is wrong, not the caller's request.
            raise InternalError(
                f"model {self.name} has no output {self.scored_output!r} to score; "
                f"its outputs are {sorted(outputs)}"
            )
        scores = confidence.score(probabilities, self.confidence_kind)
        novelty: Floats | None = None
        if self.novelty is not None:
            x = next(iter(feeds.values()))
            novelty = self.novelty.score(np.asarray(x, dtype=np.float64))
        return BatchScores(confidence.labels_of(probabilities), scores, novelty)

    def observe_drift(self, feeds: Feeds, scores: BatchScores) -> None:
        """Add a batch's rows to the drift window (O(rows)); a no-op without a reference."""
        if self.drift is not None:
            self.drift.observe(next(iter(feeds.values())), scores.confidence)


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
