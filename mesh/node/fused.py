"""Scores computed inside the model's own ONNX graph: one runtime call a batch instead of five.

A served model's confidence, labels and novelty are small array operations on its probabilities
and its input. As numpy calls after the model they cost, at one request at a time, about as much
as the model (each call pays numpy's dispatch, run cold after the event loop was idle). Here the
same formulas become nodes appended to the model's graph (an in-memory copy: the artifact on disk,
its hash and its signature are untouched), and ONNX Runtime computes them in the model's own call.

``fuse`` returns the augmented graph and the names of the outputs it added; those outputs are
hidden from the model's signature and from answers (``ServedModel.score`` takes them out). Graphs
it cannot extend safely (an opset older than 13, weights in external files, a scored output or
input of an unexpected shape) raise ``Unfusable``, and the model is scored with numpy as before.
``agrees`` checks at load that both ways give the same scores on sample rows; a model that
disagrees is served unfused.

NaN: ONNX Runtime's ReduceMax and ArgMax skip a NaN where numpy returns it, so the confidence adds
``0 * (row sum of the probabilities)``, which is NaN exactly when a probability of the row is NaN
or infinite: such a row is never confident (see ``mesh.node.policy``). numpy's confidence is NaN too
for a NaN; for an infinite probability it is infinite or finite, so that broken row may pass for
confident with numpy, never fused. The label of such a row may differ (ArgMax skips a NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mesh.errors import InvalidArgumentError
from mesh.scoring import confidence
from mesh.scoring.confidence import ConfidenceKind
from mesh.scoring.novelty import NoveltyScorer
from mesh.typedefs import AnyFloats, Feeds

#: the oldest default-domain opset whose operators are built here (ReduceSum takes its axes as an
#: input from 13; ReduceMax and ReduceMin from 18, handled below).
MIN_OPSET = 13
_PREFIX = "mesh.fused."


class Unfusable(InvalidArgumentError):
    """The graph cannot carry the scores; the model is scored with numpy instead."""


@dataclass(frozen=True, slots=True)
class FusedOutputs:
    """Names of the outputs ``fuse`` added to a graph."""

    confidence: str
    labels: str
    novelty: str | None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.confidence, self.labels) + ((self.novelty,) if self.novelty else ())


_FLOAT_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}


class _Builder:
    """Appends nodes to a graph under names no existing value uses."""

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        """Every name ``graph`` and its subgraphs (If, Loop, Scan bodies) use."""
        taken = self._taken
        taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        taken.update(t.name for t in graph.initializer)
        for node in graph.node:
            taken.update(node.output)
            taken.add(node.name)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    self._collect(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for subgraph in attribute.graphs:
                        self._collect(subgraph)

    def name(self, hint: str) -> str:
        name, n = _PREFIX + hint, 1
        while name in self._taken:
            n += 1
            name = f"{_PREFIX}{hint}.{n}"
        self._taken.add(name)
        return name

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(
        self, op_type: str, inputs: Iterable[str], hint: str, outputs: int = 1, **attributes: Any
    ) -> str:
        """Append a node; returns the name of its first output (``outputs`` in all)."""
        names = [self.name(hint)] + [self.name(f"{hint}.{i}") for i in range(1, outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=self.name(hint + ".node"))
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items())
        self.nodes.append(node)
        return names[0]

    def reduce(self, op_type: str, x: str, hint: str) -> str:
        """``op_type`` over axis 1, dropping it: (N, C) -> (N,)."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            axes = self.constant("axis1", np.array([1], dtype=np.int64))
            return self.op(op_type, [x, axes], hint, keepdims=0)
        return self.op(op_type, [x], hint, axes=[1], keepdims=0)


def fuse(
    model: onnx.ModelProto,
    *,
    scored_output: str,
    kind: ConfidenceKind,
    novelty: NoveltyScorer | None,
) -> tuple[onnx.ModelProto, FusedOutputs]:
    """A copy of ``model`` that also outputs each row's confidence, label and novelty."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise Unfusable(f"default-domain opset {opset or 'none'} is older than {MIN_OPSET}")
    graph = model.graph
    for tensor in graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            raise Unfusable("the model keeps weights in external files")
    produced = {o.name: o for o in graph.output}
    scored = produced.get(scored_output)
    if scored is None or scored.type.tensor_type.elem_type not in _FLOAT_TYPES:
        raise Unfusable(f"no float tensor output {scored_output!r}")
    if len(scored.type.tensor_type.shape.dim) != 2:
        raise Unfusable(f"output {scored_output!r} is not of shape [N, classes]")
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    b = _Builder(fused.graph, opset)
    p = scored_output
    # 0 x row sum: 0 for a row of finite probabilities, NaN when any is NaN or infinite.
    zero = b.constant("zero", np.array(0.0, dtype=_FLOAT_TYPES[scored.type.tensor_type.elem_type]))
    guard = b.op("Mul", [b.reduce("ReduceSum", p, "row_sum"), zero], "guard")
    if kind is ConfidenceKind.MAX_PROB:
        conf = b.reduce("ReduceMax", p, "max_prob")
    else:
        # numpy computes margin and entropy in float64: so does the graph.
        p64 = b.op("Cast", [p], "p64", to=TensorProto.DOUBLE)
        if kind is ConfidenceKind.MARGIN:
            k = b.constant("k2", np.array([2], dtype=np.int64))
            # values and indices: TopK has both outputs, the indices go unused
            top2 = b.op("TopK", [p64, k], "top2", outputs=2, axis=1, largest=1, sorted=1)
            conf = b.op(
                "Sub",
                [b.reduce("ReduceMax", top2, "first"), b.reduce("ReduceMin", top2, "second")],
                "margin",
            )
        else:
            classes = _classes(scored)
            low = b.constant("clip_low", np.array(1e-12, dtype=np.float64))
            high = b.constant("clip_high", np.array(1.0, dtype=np.float64))
            clipped = b.op("Clip", [p64, low, high], "clipped")
            plogp = b.op("Mul", [clipped, b.op("Log", [clipped], "log")], "plogp")
            # 1 - entropy / log(C), entropy = -sum(p log p): 1 + sum(p log p) / log(C).
            scaled = b.op(
                "Div",
                [
                    b.reduce("ReduceSum", plogp, "neg_entropy"),
                    b.constant("log_classes", np.array(math.log(classes), dtype=np.float64)),
                ],
                "scaled",
            )
            conf = b.op(
                "Add", [b.constant("one", np.array(1.0, dtype=np.float64)), scaled], "entropy"
            )
        guard = b.op("Cast", [guard], "guard64", to=TensorProto.DOUBLE)
    conf = b.op("Add", [conf, guard], "confidence")
    labels = b.op("ArgMax", [p], "labels", axis=1, keepdims=0)
    novelty_name: str | None = None
    if novelty is not None:
        novelty_name = _novelty(b, graph, novelty)
    fused.graph.initializer.extend(b.initializers)
    fused.graph.node.extend(b.nodes)
    conf_type = (
        scored.type.tensor_type.elem_type if kind is ConfidenceKind.MAX_PROB else TensorProto.DOUBLE
    )
    outputs = [(conf, conf_type), (labels, TensorProto.INT64)]
    if novelty_name is not None:
        outputs.append((novelty_name, TensorProto.DOUBLE))
    for name, elem_type in outputs:
        fused.graph.output.append(helper.make_tensor_value_info(name, elem_type, ["N"]))
    return fused, FusedOutputs(conf, labels, novelty_name)


def _classes(scored: onnx.ValueInfoProto) -> int:
    dims = scored.type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value") or dims[1].dim_value < 2:
        raise Unfusable("entropy needs the scored output's class count, [N, C] with C >= 2")
    return int(dims[1].dim_value)


def _novelty(b: _Builder, graph: onnx.GraphProto, novelty: NoveltyScorer) -> str:
    """``NoveltyScorer.score`` per row, (x - mean) M (x - mean)', in float64."""
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs:
        raise Unfusable("the model has no input")
    x = inputs[0]
    tensor = x.type.tensor_type
    dims = tensor.shape.dim
    features = novelty.mean.shape[0]
    if (
        tensor.elem_type not in _FLOAT_TYPES
        or len(dims) != 2
        or (dims[1].HasField("dim_value") and dims[1].dim_value != features)
    ):
        raise Unfusable(f"novelty needs a float input of shape [N, {features}]")
    x64 = x.name
    if tensor.elem_type != TensorProto.DOUBLE:
        x64 = b.op("Cast", [x.name], "x64", to=TensorProto.DOUBLE)
    # M is symmetric and positive semi-definite (a sum of two Gram forms), M = L L' with
    # L = V sqrt(w) from its eigendecomposition, so the score is |x L - mean L|^2: one Gemm and
    # one ReduceSumSquare (three operators fewer than (x - mean) M (x - mean)' spelled out; each
    # costs a few microseconds in a call made one request at a time). Equal to numpy's to about
    # 1e-13 relative; ``agrees`` checks at load.
    weights, vectors = np.linalg.eigh(np.asarray(novelty.quadratic_form, dtype=np.float64))
    factor = np.ascontiguousarray(vectors * np.sqrt(np.clip(weights, 0.0, None)))
    shift = -(np.asarray(novelty.mean, dtype=np.float64) @ factor)
    projected = b.op(
        "Gemm", [x64, b.constant("factor", factor), b.constant("shift", shift)], "projected"
    )
    return b.reduce("ReduceSumSquare", projected, "novelty")


def agrees(
    feeds: Feeds,
    outputs: Feeds,
    names: FusedOutputs,
    *,
    scored_output: str,
    kind: ConfidenceKind,
    novelty: NoveltyScorer | None,
) -> str | None:
    """None when the fused scores of a run match numpy's on the same outputs, else what differs."""
    probabilities = outputs[scored_output]
    want_conf: AnyFloats = confidence.score(probabilities, kind)
    got_conf = np.asarray(outputs[names.confidence], dtype=np.float64)
    if not np.allclose(got_conf, want_conf, rtol=1e-9, atol=1e-12, equal_nan=True):
        return f"confidence {got_conf[:4]} against numpy's {want_conf[:4]}"
    if outputs[names.labels].tolist() != confidence.labels_of(probabilities):
        return "labels"
    if novelty is not None and names.novelty is not None:
        want = novelty.score(np.asarray(next(iter(feeds.values())), dtype=np.float64))
        got = np.asarray(outputs[names.novelty])
        if not np.allclose(got, want, rtol=1e-9, atol=1e-12):
            return f"novelty {got[:4]} against numpy's {want[:4]}"
    return None


def flags_non_finite(run: Callable[[Feeds], Feeds], feeds: Feeds, names: FusedOutputs) -> bool:
    """Whether the fused novelty is NaN or infinite for rows whose input holds a NaN, +inf or
    -inf, and finite for the others: tried on ``feeds`` (the model's only input, at least four
    rows of floats) with one such value put in each of the first three rows.

    When it is, a request alone in its batch runs before its inputs are checked, and only a
    non-finite novelty makes the node check them (``ServedModel.checks_inputs_after``): the
    usual request saves the check, and a request with no neighbours harms none by running.
    The novelty is a sum of squares of linear combinations of the input, so NaN and infinity
    carry through; this makes sure the runtime's arithmetic does as the formula says."""
    if names.novelty is None or len(feeds) != 1:
        return False
    ((name, array),) = feeds.items()
    if array.dtype.kind != "f" or array.ndim < 2 or array.shape[0] < 4:
        return False
    bad = np.array(array, copy=True)
    flat = bad.reshape(bad.shape[0], -1)
    width = flat.shape[1]
    flat[0, 0] = np.nan
    flat[1, width - 1] = np.inf
    flat[2, width // 2] = -np.inf
    try:
        novelty = np.asarray(run({name: bad})[names.novelty])
    except Exception:  # a model that refuses such input: keep checking before the run
        return False
    if novelty.shape != (bad.shape[0],):
        return False
    finite = np.isfinite(novelty)
    return not finite[:3].any() and bool(finite[3:].all())
