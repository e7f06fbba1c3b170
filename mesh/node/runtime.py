"""The ONNX Runtime adapter: load a model, read its signature, run it, and serve it async.

``OnnxModel`` is a thin synchronous wrapper around one ``InferenceSession``. ``ModelRunner`` puts
a ``MicroBatcher`` in front of it and runs each batch either on the event loop or in the model's
own worker thread, whichever its measured cost says is cheaper.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Collection
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph

from mesh.errors import InternalError, InvalidArgumentError, MeshError, NotFoundError
from mesh.lifecycle import Service
from mesh.node.batching import MicroBatcher, row_count
from mesh.typedefs import Feeds

#: ONNX Runtime's type strings to numpy dtype names; anything else is reported as ``object``.
ORT_DTYPES: dict[str, str] = {
    "tensor(bool)": "bool",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(string)": "str",
}


@dataclass(frozen=True, slots=True)
class GraphTensor:
    name: str
    #: numpy dtype name (``float32``), ``str`` for string tensors, ``object`` for non-tensors.
    dtype: str
    #: ``None`` for a dimension the model leaves free (symbolic or unknown).
    shape: tuple[int | None, ...]


def _spec(arg: Any) -> GraphTensor:
    shape = tuple(d if isinstance(d, int) else None for d in (arg.shape or ()))
    return GraphTensor(name=arg.name, dtype=ORT_DTYPES.get(arg.type, "object"), shape=shape)


def _is_invalid_argument(exc: Exception) -> bool:
    # ORT's Python layer raises ValueError/TypeError for missing or unconvertible feeds.
    return isinstance(exc, InvalidArgument | InvalidGraph | ValueError | TypeError)


class OnnxModel:
    """One ONNX model in one ONNX Runtime session; ``run`` is synchronous and thread-safe."""

    def __init__(
        self, session: ort.InferenceSession, path: Path, hidden_outputs: Collection[str] = ()
    ) -> None:
        self.path = path
        self.session = session
        self.inputs = [_spec(arg) for arg in session.get_inputs()]
        everything = [_spec(arg) for arg in session.get_outputs()]
        #: the model's signature: without the outputs added to its graph (``mesh.node.fused``).
        self.outputs = [spec for spec in everything if spec.name not in hidden_outputs]
        #: what ``run`` returns: every output, the hidden ones too.
        self._output_names = [spec.name for spec in everything]
        #: wall-clock time of loading, for status reports.
        self.loaded_at = time.time()
        self.warm = False
        self.single_row_seconds: float | None = None
        self.per_row_seconds_batched: float | None = None
        self._warmup_rows = 1

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        graph: bytes | None = None,
        hidden_outputs: Collection[str] = (),
    ) -> OnnxModel:
        """The model at ``path``; or, when ``graph`` is given, that serialized graph (a copy of
        the file's, extended with ``hidden_outputs``: see ``mesh.node.fused``) under its name."""
        model_path = Path(path)
        if not model_path.is_file():
            raise NotFoundError(f"no model file at {model_path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(
                graph if graph is not None else str(model_path),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise InvalidArgumentError(f"cannot load model {model_path}: {exc}") from exc
        return cls(session, model_path, hidden_outputs)

    def run(self, feeds: Feeds) -> Feeds:
        """All outputs by name. ORT's complaints about the feeds become ``InvalidArgumentError``."""
        try:
            values = self.session.run(self._output_names, feeds)
        except Exception as exc:
            if _is_invalid_argument(exc):
                raise InvalidArgumentError(f"model {self.path.name}: {exc}") from exc
            raise InternalError(f"model {self.path.name} failed: {exc}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def sample_feeds(self, rows: int, seed: int = 0) -> Feeds:
        """Inputs of the model's signature with ``rows`` rows; other free dimensions are 1."""
        rng = np.random.default_rng(seed)
        feeds: Feeds = {}
        for spec in self.inputs:
            if spec.dtype in ("str", "object"):
                raise InvalidArgumentError(
                    f"model {self.path.name}: cannot make sample data for {spec.name!r} "
                    f"of type {spec.dtype}"
                )
            dims = list(spec.shape) or [rows]
            shape = (rows, *(d if d is not None else 1 for d in dims[1:]))
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                feeds[spec.name] = rng.random(shape).astype(dtype)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=dtype)
        return feeds

    def warmup(self, rows: int = 32, repeats: int = 20) -> float:
        """Run batches of 1 and of ``rows`` rows; returns the median seconds of a 1-row call.

        Also sets ``per_row_seconds_batched`` (median ``rows``-row call over ``rows``) and ``warm``.
        """
        rows = max(rows, 1)
        repeats = max(repeats, 1)
        single = self.sample_feeds(1)
        batch = self.sample_feeds(rows)
        self.run(single)
        self.run(batch)
        self.single_row_seconds = self._median_seconds(single, repeats)
        self.per_row_seconds_batched = self._median_seconds(batch, repeats) / rows
        self._warmup_rows = rows
        self.warm = True
        return self.single_row_seconds

    def _median_seconds(self, feeds: Feeds, repeats: int) -> float:
        times: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.run(feeds)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def estimate_seconds(self, rows: int) -> float | None:
        """Expected seconds of one call on ``rows`` rows, or None before ``warmup``.

        Linear in rows through the two warmup measurements (1 row and the warmup batch).
        """
        single = self.single_row_seconds
        per_row = self.per_row_seconds_batched
        if single is None or per_row is None:
            return None
        if rows <= 1 or self._warmup_rows <= 1:
            return single * max(rows, 1)
        marginal = max(0.0, (per_row * self._warmup_rows - single) / (self._warmup_rows - 1))
        return single + (rows - 1) * marginal


class ModelRunner(Service):
    """Serves one ``OnnxModel`` to async callers, through a ``MicroBatcher`` when batching is on.

    Warms the model up (in its worker thread) on start if it is not warm yet. Owns its worker
    executor unless one is given. ``always_wait`` is the batcher's fixed-window mode, kept for
    comparison (``MicroBatcher``).
    """

    def __init__(
        self,
        model: OnnxModel,
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 1.0,
        inline_below_us: float = 150.0,
        executor: Executor | None = None,
        always_wait: bool = False,
    ) -> None:
        self.model = model
        self.inline_below_us = inline_below_us
        self.inline_batches = 0
        self.executor_batches = 0
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ort-{model.path.stem}"
        )
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            name=model.path.stem,
            always_wait=always_wait,
        )

    @property
    def loaded_at(self) -> float:
        return self.model.loaded_at

    @property
    def warm(self) -> bool:
        return self.model.warm

    async def _start(self) -> None:
        if not self.model.warm:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.model.warmup)
        await self.batcher.start()

    async def _stop(self) -> None:
        await self.batcher.stop()
        if self._own_executor:
            await asyncio.get_running_loop().run_in_executor(
                None, partial(self._executor.shutdown, wait=True, cancel_futures=True)
            )

    async def infer(self, feeds: Feeds) -> Feeds:
        try:
            return await self.batcher.submit(feeds)
        except MeshError:
            raise
        except Exception as exc:
            raise InternalError(f"model {self.model.path.name}: {exc}") from exc

    def runs_inline(self, rows: int) -> bool:
        """Whether a call on ``rows`` rows is cheaper on the event loop than in the worker.

        A thread hop costs ~200 us here (README, "Inline or worker thread"); a call expected to
        cost less than ``inline_below_us`` runs on the loop, blocking it only briefly."""
        cost = self.model.estimate_seconds(rows)
        return cost is not None and cost * 1e6 < self.inline_below_us

    def run_sync(self, feeds: Feeds) -> Feeds:
        self.inline_batches += 1
        return self.model.run(feeds)

    async def run_in_worker(self, feeds: Feeds) -> Feeds:
        self.executor_batches += 1
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.model.run, feeds
        )

    async def run_in_worker_timed(self, feeds: Feeds) -> tuple[Feeds, float]:
        """``run_in_worker``, with the CPU seconds the call took in the worker's thread."""
        self.executor_batches += 1
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._timed_run, feeds
        )

    def _timed_run(self, feeds: Feeds) -> tuple[Feeds, float]:
        started = time.thread_time()
        outputs = self.model.run(feeds)
        return outputs, time.thread_time() - started

    async def _run_batch(self, feeds: Feeds) -> Feeds:
        if self.runs_inline(row_count(feeds)):
            return self.run_sync(feeds)
        return await self.run_in_worker(feeds)
