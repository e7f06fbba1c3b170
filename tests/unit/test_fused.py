"""Scores in the model's own graph (``mesh.node.fused``): numpy's numbers from ONNX Runtime, or
``Unfusable``. Real graphs built with ``onnx.helper``, run in real ONNX Runtime sessions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from mesh.dev.models.demo import DemoArtifacts
from mesh.node.fused import _PREFIX, FusedOutputs, Unfusable, agrees, flags_non_finite, fuse
from mesh.node.repository import load_model
from mesh.node.runtime import OnnxModel
from mesh.scoring import confidence
from mesh.scoring.confidence import ConfidenceKind
from mesh.scoring.novelty import NoveltyScorer
from mesh.settings import ModelSettings
from mesh.typedefs import Array, Feeds
from tests.fixtures.chain import model_settings

FEATURES = 8
CLASSES = 5
IR_VERSION = 9

#: every confidence kind.
KINDS = [ConfidenceKind.MAX_PROB, ConfidenceKind.MARGIN, ConfidenceKind.ENTROPY]


# ---------------------------------------------------------------------------------------------
# graphs and sessions


def _classifier(
    opset: int = 17,
    *,
    probabilities: int = TensorProto.FLOAT,
    classes: int | str = CLASSES,
    names: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """input [N, 8] -> MatMul W [8, 5] -> Add b -> Softmax -> "probabilities" [N, 5], and
    ArgMax -> "label" [N]; ``names`` renames intermediate values, initializers and nodes."""
    n = {"W": "W", "B": "B", "logits0": "logits0", "logits": "logits", "softmax": "softmax"}
    n.update(names or {})
    rng = np.random.default_rng(7)
    weight = (rng.normal(size=(FEATURES, CLASSES)) * 0.8).astype(np.float32)
    bias = rng.normal(size=(CLASSES,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", n["W"]], [n["logits0"]], name="matmul"),
        helper.make_node("Add", [n["logits0"], n["B"]], [n["logits"]], name="add"),
        helper.make_node("Softmax", [n["logits"]], [n["softmax"]], name="softmax", axis=1),
        helper.make_node("ArgMax", [n["softmax"]], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    if probabilities == TensorProto.FLOAT:
        nodes.append(helper.make_node("Identity", [n["softmax"]], ["probabilities"], name="out"))
    else:
        nodes.append(
            helper.make_node(
                "Cast", [n["softmax"]], ["probabilities"], name="out", to=probabilities
            )
        )
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", probabilities, ["N", classes]),
        ],
        [numpy_helper.from_array(weight, n["W"]), numpy_helper.from_array(bias, n["B"])],
    )
    return _model(graph, opset)


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )


def _one_node(
    op_type: str,
    input_type: int = TensorProto.FLOAT,
    input_shape: list[int | str] | None = None,
    output_shape: list[int | str] | None = None,
    attributes: dict[str, Any] | None = None,
) -> onnx.ModelProto:
    """input -> ``op_type`` -> "probabilities" [N, 5] (float32)."""
    graph = helper.make_graph(
        [helper.make_node(op_type, ["input"], ["probabilities"], **(attributes or {}))],
        op_type.lower(),
        [helper.make_tensor_value_info("input", input_type, input_shape or ["N", CLASSES])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, output_shape or ["N", CLASSES]
            )
        ],
    )
    return _model(graph)


def _run(model: onnx.ModelProto, feeds: Feeds) -> Feeds:
    """Every output of ``model`` by name, from a real ONNX Runtime session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _assert_confidence(got: Array, want: Array, kind: ConfidenceKind) -> None:
    """Fused against numpy: exact for max_prob and margin, to 1e-12 for entropy (a sum)."""
    assert got.shape == want.shape
    got64 = np.asarray(got, dtype=np.float64)
    if kind is ConfidenceKind.ENTROPY:
        assert np.allclose(got64, want, rtol=1e-12, atol=1e-14, equal_nan=True)
    else:
        assert np.array_equal(got64, want, equal_nan=True)


@pytest.fixture(scope="module")
def scorer() -> NoveltyScorer:
    train = np.random.default_rng(1).normal(size=(200, FEATURES))
    return NoveltyScorer.fit(train, n_components=3)


@pytest.fixture(scope="module")
def rows(scorer: NoveltyScorer) -> npt.NDArray[np.float32]:
    """250 rows like the training ones, then 50 far from them."""
    rng = np.random.default_rng(2)
    near = rng.normal(size=(250, FEATURES))
    far = rng.normal(size=(50, FEATURES)) * 8 + 25
    x = np.concatenate([near, far]).astype(np.float32)
    assert scorer.is_novel(x[250:]).all()
    return x


# ---------------------------------------------------------------------------------------------
# 1. the fused scores are numpy's


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("opset", [13, 17, 18])
def test_fused_scores_equal_numpys(
    opset: int, kind: ConfidenceKind, scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    model = _classifier(opset)
    before = model.SerializeToString()
    fused, names = fuse(model, scored_output="probabilities", kind=kind, novelty=scorer)
    assert model.SerializeToString() == before, "fuse changed the model it was given"
    assert names.novelty is not None
    assert names.names == (names.confidence, names.labels, names.novelty)
    assert [o.name for o in fused.graph.output] == ["label", "probabilities", *names.names]

    feeds: Feeds = {"input": rows}
    out = _run(fused, feeds)
    own = _run(model, feeds)
    assert set(out) == {"label", "probabilities", *names.names}
    for name in own:  # the model's own outputs are what they were
        assert np.array_equal(out[name], own[name])
    p = out["probabilities"]

    assert out[names.labels].dtype == np.int64
    assert out[names.labels].tolist() == confidence.labels_of(p)
    conf = out[names.confidence]
    assert conf.dtype == (np.float32 if kind is ConfidenceKind.MAX_PROB else np.float64)
    _assert_confidence(conf, confidence.score(p, kind), kind)
    novelty = out[names.novelty]
    assert novelty.dtype == np.float64
    assert np.allclose(novelty, scorer.score(rows.astype(np.float64)), rtol=1e-9, atol=0)
    assert (novelty[250:] > scorer.threshold).all()
    assert (
        agrees(feeds, out, names, scored_output="probabilities", kind=kind, novelty=scorer) is None
    )
    onnx.checker.check_model(fused, full_check=True)


@pytest.mark.parametrize("kind", KINDS)
def test_without_novelty_only_confidence_and_labels_are_added(
    kind: ConfidenceKind, rows: npt.NDArray[np.float32]
) -> None:
    model = _classifier()
    fused, names = fuse(model, scored_output="probabilities", kind=kind, novelty=None)
    assert names.novelty is None
    assert names.names == (names.confidence, names.labels)
    assert [o.name for o in fused.graph.output] == ["label", "probabilities", *names.names]
    # nothing reads the input but the model's own MatMul
    assert [node.op_type for node in fused.graph.node if "input" in node.input] == ["MatMul"]
    out = _run(fused, {"input": rows})
    assert set(out) == {"label", "probabilities", *names.names}
    p = out["probabilities"]
    assert out[names.labels].tolist() == confidence.labels_of(p)
    _assert_confidence(out[names.confidence], confidence.score(p, kind), kind)
    assert (
        agrees({"input": rows}, out, names, scored_output="probabilities", kind=kind, novelty=None)
        is None
    )


@pytest.mark.parametrize(
    "probabilities", [TensorProto.FLOAT16, TensorProto.DOUBLE], ids=["float16", "double"]
)
@pytest.mark.parametrize("kind", KINDS)
def test_half_and_double_probabilities_are_scored_like_numpy(
    probabilities: int, kind: ConfidenceKind, rows: npt.NDArray[np.float32]
) -> None:
    fused, names = fuse(
        _classifier(probabilities=probabilities),
        scored_output="probabilities",
        kind=kind,
        novelty=None,
    )
    out = _run(fused, {"input": rows})
    p = out["probabilities"]
    assert p.dtype == helper.tensor_dtype_to_np_dtype(probabilities)
    conf = out[names.confidence]
    # max_prob keeps the probabilities' type; margin and entropy are float64, as in numpy.
    assert conf.dtype == (p.dtype if kind is ConfidenceKind.MAX_PROB else np.float64)
    _assert_confidence(conf, confidence.score(p, kind), kind)
    assert out[names.labels].tolist() == confidence.labels_of(p)


def test_novelty_of_a_double_input_with_a_free_feature_dimension(
    scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    """No Cast for a float64 input; a symbolic feature dimension is accepted."""
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["head"]),
            helper.make_node("Softmax", ["head"], ["probabilities"], axis=1),
        ],
        "double",
        [helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["N", "F"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, ["N", CLASSES])],
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
            numpy_helper.from_array(np.array([CLASSES], dtype=np.int64), "ends"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    fused, names = fuse(
        _model(graph), scored_output="probabilities", kind=ConfidenceKind.MAX_PROB, novelty=scorer
    )
    assert not any(node.op_type == "Cast" for node in fused.graph.node)
    x = rows.astype(np.float64)
    out = _run(fused, {"input": x})
    assert names.novelty is not None
    assert np.allclose(out[names.novelty], scorer.score(x), rtol=1e-9, atol=0)
    assert np.array_equal(
        out[names.confidence], confidence.score(out["probabilities"], ConfidenceKind.MAX_PROB)
    )


@pytest.mark.parametrize("what", ["confidence", "labels", "novelty"])
def test_agrees_names_what_differs(
    what: str, scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    kind = ConfidenceKind.MAX_PROB
    fused, names = fuse(_classifier(), scored_output="probabilities", kind=kind, novelty=scorer)
    feeds: Feeds = {"input": rows}
    out = _run(fused, feeds)
    assert (
        agrees(feeds, out, names, scored_output="probabilities", kind=kind, novelty=scorer) is None
    )
    name = getattr(names, what)
    changed = out[name].copy()
    changed[3] = changed[3] + (1 if what == "labels" else changed[3] * 1e-6 + 1e-6)
    out[name] = changed
    problem = agrees(feeds, out, names, scored_output="probabilities", kind=kind, novelty=scorer)
    assert problem is not None and problem.startswith(what)


# ---------------------------------------------------------------------------------------------
# 2. NaN


@pytest.mark.parametrize("op_type", ["Softmax", "Identity"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_row_with_a_nan_probability_has_nan_confidence(
    op_type: str, kind: ConfidenceKind
) -> None:
    """Softmax spreads a NaN over its row; Identity leaves one NaN among finite probabilities,
    which ONNX Runtime's ReduceMax alone would skip."""
    model = _one_node(op_type, attributes={"axis": 1} if op_type == "Softmax" else None)
    fused, names = fuse(model, scored_output="probabilities", kind=kind, novelty=None)
    x = np.random.default_rng(3).random((8, CLASSES)).astype(np.float32)
    x /= x.sum(axis=1, keepdims=True)
    nan_rows = [1, 4, 6]
    x[1, 2] = np.nan
    x[4, [0, 4]] = np.nan
    x[6, :] = np.nan
    out = _run(fused, {"input": x})
    p = out["probabilities"]
    want = confidence.score(p, kind)
    got = out[names.confidence]
    assert np.isnan(want[nan_rows]).all()  # numpy's behaviour
    assert np.isnan(got[nan_rows]).all()
    finite = [i for i in range(len(x)) if i not in nan_rows]
    assert not np.isnan(got[finite]).any()
    _assert_confidence(got[finite], want[finite], kind)
    assert out[names.labels][finite].tolist() == confidence.labels_of(p[finite])


def test_an_infinite_probability_makes_the_row_unconfident() -> None:
    """As the module promises: NaN when a probability is infinite (numpy's max_prob is inf)."""
    fused, names = fuse(
        _one_node("Identity"),
        scored_output="probabilities",
        kind=ConfidenceKind.MAX_PROB,
        novelty=None,
    )
    x = np.full((3, CLASSES), 0.2, dtype=np.float32)
    x[1, 3] = np.inf
    got = _run(fused, {"input": x})[names.confidence]
    assert np.isnan(got[1])
    assert got[[0, 2]].tolist() == pytest.approx([0.2, 0.2])


# ---------------------------------------------------------------------------------------------
# 3. graphs fuse cannot extend


def _external_weight() -> onnx.ModelProto:
    model = _classifier()
    weight = model.graph.initializer[0]
    external_data_helper.set_external_data(weight, location="weights.bin", offset=0, length=160)
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    assert weight.external_data[0].key == "location"
    return model


def _no_default_opset() -> onnx.ModelProto:
    model = _classifier()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    return model


def _single_class() -> onnx.ModelProto:
    return _one_node("Softmax", input_shape=["N", 1], output_shape=["N", 1], attributes={"axis": 1})


def _int_input() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("Softmax", ["x"], ["probabilities"], axis=1),
        ],
        "ints",
        [helper.make_tensor_value_info("input", TensorProto.INT32, ["N", CLASSES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
    )
    return _model(graph)


def _rank3_input() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["x"], axis=1),
            helper.make_node("Softmax", ["x"], ["probabilities"], axis=1),
        ],
        "rank3",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, CLASSES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
    )
    return _model(graph)


def _only_initializer_inputs() -> onnx.ModelProto:
    """The graph's one input is an initializer too (a constant model)."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["input"], ["probabilities"], axis=1)],
        "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, CLASSES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, CLASSES])],
        [numpy_helper.from_array(np.zeros((1, CLASSES), dtype=np.float32), "input")],
    )
    return _model(graph)


def _fitted(features: int) -> NoveltyScorer:
    return NoveltyScorer.fit(np.random.default_rng(4).normal(size=(50, features)), n_components=2)


Case = tuple[Callable[[], onnx.ModelProto], str, ConfidenceKind, int | None, str]
UNFUSABLE: dict[str, Case] = {
    "opset 12": (
        lambda: _classifier(12),
        "probabilities",
        ConfidenceKind.MAX_PROB,
        None,
        "opset 12 is older than 13",
    ),
    "no default-domain opset": (
        _no_default_opset,
        "probabilities",
        ConfidenceKind.MAX_PROB,
        None,
        "opset none",
    ),
    "scored output missing": (
        _classifier,
        "probs",
        ConfidenceKind.MAX_PROB,
        None,
        "no float tensor output 'probs'",
    ),
    "scored value is not a graph output": (
        _classifier,
        "logits",
        ConfidenceKind.MAX_PROB,
        None,
        "no float tensor output 'logits'",
    ),
    "scored output int64": (
        _classifier,
        "label",
        ConfidenceKind.MAX_PROB,
        None,
        "no float tensor output 'label'",
    ),
    "external weights": (
        _external_weight,
        "probabilities",
        ConfidenceKind.MAX_PROB,
        None,
        "external files",
    ),
    "entropy, free class count": (
        lambda: _classifier(classes="C"),
        "probabilities",
        ConfidenceKind.ENTROPY,
        None,
        "class count",
    ),
    "entropy, one class": (
        _single_class,
        "probabilities",
        ConfidenceKind.ENTROPY,
        None,
        "class count",
    ),
    "novelty, other feature count": (
        _classifier,
        "probabilities",
        ConfidenceKind.MAX_PROB,
        FEATURES - 2,
        r"float input of shape \[N, 6\]",
    ),
    "novelty, integer input": (
        _int_input,
        "probabilities",
        ConfidenceKind.MAX_PROB,
        CLASSES,
        r"float input of shape \[N, 5\]",
    ),
    "novelty, rank-3 input": (
        _rank3_input,
        "probabilities",
        ConfidenceKind.MAX_PROB,
        CLASSES,
        r"float input of shape \[N, 5\]",
    ),
    "novelty, no input": (
        _only_initializer_inputs,
        "probabilities",
        ConfidenceKind.MAX_PROB,
        CLASSES,
        "no input",
    ),
}


@pytest.mark.parametrize("case", UNFUSABLE.values(), ids=UNFUSABLE.keys())
def test_unfusable_graphs_are_refused(case: Case) -> None:
    build, scored_output, kind, features, message = case
    model = build()
    novelty = _fitted(features) if features is not None else None
    with pytest.raises(Unfusable, match=message):
        fuse(model, scored_output=scored_output, kind=kind, novelty=novelty)


def _opset_as_ai_onnx() -> onnx.ModelProto:
    model = _classifier()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx", 17))
    return model


Fusable = tuple[Callable[[], onnx.ModelProto], ConfidenceKind, int | None]
FUSABLE: dict[str, Fusable] = {
    "opset imported as ai.onnx": (_opset_as_ai_onnx, ConfidenceKind.ENTROPY, None),
    "free class count, max_prob": (lambda: _classifier(classes="C"), ConfidenceKind.MAX_PROB, None),
    "novelty, matching feature count": (_classifier, ConfidenceKind.ENTROPY, FEATURES),
}


@pytest.mark.parametrize("case", FUSABLE.values(), ids=FUSABLE.keys())
def test_near_misses_of_the_refusals_fuse(case: Fusable, rows: npt.NDArray[np.float32]) -> None:
    """The checks are no broader than they say: these graphs fuse and score like numpy."""
    build, kind, features = case
    novelty = _fitted(features) if features is not None else None
    fused, names = fuse(build(), scored_output="probabilities", kind=kind, novelty=novelty)
    feeds: Feeds = {"input": rows}
    out = _run(fused, feeds)
    assert set(names.names) <= set(out)
    assert (
        agrees(feeds, out, names, scored_output="probabilities", kind=kind, novelty=novelty) is None
    )


# ---------------------------------------------------------------------------------------------
# 4. names fuse would pick are taken already


def test_names_taken_by_the_model_are_not_reused(
    scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    kind = ConfidenceKind.ENTROPY
    model = _classifier(
        names={
            "W": _PREFIX + "form",
            "B": _PREFIX + "zero",
            "logits0": _PREFIX + "guard",
            "logits": _PREFIX + "confidence",
            "softmax": _PREFIX + "labels",
        }
    )
    model.graph.node[0].name = _PREFIX + "confidence.node"
    model.graph.node[1].name = _PREFIX + "labels.2"
    model.graph.output.append(
        helper.make_tensor_value_info(_PREFIX + "labels", TensorProto.FLOAT, ["N", CLASSES])
    )
    model.graph.value_info.append(
        helper.make_tensor_value_info(_PREFIX + "novelty", TensorProto.FLOAT, ["N", CLASSES])
    )
    onnx.checker.check_model(model, full_check=True)
    before = {v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    before |= {t.name for t in model.graph.initializer}
    before |= {name for node in model.graph.node for name in (*node.output, node.name)}

    fused, names = fuse(model, scored_output="probabilities", kind=kind, novelty=scorer)

    assert not set(names.names) & before
    assert names.confidence.startswith(_PREFIX + "confidence.")
    assert names.labels == _PREFIX + "labels.3"
    outputs = [o.name for o in fused.graph.output]
    assert len(outputs) == len(set(outputs)) == 6
    produced = [i.name for i in fused.graph.input]
    produced += [t.name for t in fused.graph.initializer]
    produced += [name for node in fused.graph.node for name in node.output]
    assert len(produced) == len(set(produced)), "a value is defined twice"
    node_names = [node.name for node in fused.graph.node]
    assert len(node_names) == len(set(node_names))
    onnx.checker.check_model(fused, full_check=True)

    out = _run(fused, {"input": rows})
    own = _run(model, {"input": rows})
    for name in own:
        assert np.array_equal(out[name], own[name])
    p = out["probabilities"]
    assert out[names.labels].tolist() == confidence.labels_of(p)
    _assert_confidence(out[names.confidence], confidence.score(p, kind), kind)
    assert names.novelty is not None
    assert np.allclose(out[names.novelty], scorer.score(rows.astype(np.float64)), rtol=1e-9)


def test_a_name_taken_inside_a_subgraph_is_not_reused(rows: npt.NDArray[np.float32]) -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Softmax", ["input"], [_PREFIX + "zero"], axis=1)],
        "then",
        [],
        [helper.make_tensor_value_info(_PREFIX + "zero", TensorProto.FLOAT, ["N", CLASSES])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["input"], [_PREFIX + "guard"])],
        "else",
        [],
        [helper.make_tensor_value_info(_PREFIX + "guard", TensorProto.FLOAT, ["N", CLASSES])],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["probabilities"],
                then_branch=then_branch,
                else_branch=else_branch,
            )
        ],
        "branches",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", CLASSES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(np.array(True), "cond")],
    )
    model = _model(graph)
    x = rows[:, :CLASSES].copy()
    assert "probabilities" in _run(model, {"input": x})
    kind = ConfidenceKind.MAX_PROB
    fused, names = fuse(model, scored_output="probabilities", kind=kind, novelty=None)
    out = _run(fused, {"input": x})
    _assert_confidence(out[names.confidence], confidence.score(out["probabilities"], kind), kind)


# ---------------------------------------------------------------------------------------------
# 5. through the loader, with the demo models


@pytest.fixture(scope="module")
def held_out(demo: DemoArtifacts) -> npt.NDArray[np.float32]:
    x: npt.NDArray[np.float32] = np.load(demo.test)["x"].astype(np.float32)
    return x


@pytest.mark.parametrize(
    ("variant", "tier"), [("edge-int8", "edge"), ("edge", "edge"), ("cloud", "cloud")]
)
async def test_the_loader_fuses_the_demo_models(
    demo: DemoArtifacts, held_out: npt.NDArray[np.float32], variant: str, tier: str
) -> None:
    served = await load_model(model_settings(demo, variant), tier)
    plain = await load_model(model_settings(demo, variant, fuse_scores=False), tier)
    assert served.fused is not None
    assert plain.fused is None
    assert served.novelty is not None and served.fused.novelty is not None
    assert served.checks_inputs_after and not plain.checks_inputs_after
    model = served.runner.model
    assert [o.name for o in model.outputs] == ["label", "probabilities"]
    assert model.outputs == plain.runner.model.outputs
    assert served.inputs == plain.inputs
    assert served.thresholds == plain.thresholds

    feeds: Feeds = {served.inputs[0].name: held_out}
    outputs = served.run(feeds)
    assert set(outputs) == {"label", "probabilities", *served.fused.names}
    scores = served.score(feeds, outputs)
    assert sorted(outputs) == ["label", "probabilities"]  # the scores were taken out
    plain_outputs = plain.run(feeds)
    want = plain.score(feeds, plain_outputs)
    for name, value in plain_outputs.items():
        assert np.array_equal(outputs[name], value)

    assert len(scores.labels) == len(held_out)
    assert scores.labels == want.labels
    _assert_confidence(scores.confidence, want.confidence, served.confidence_kind)
    assert scores.novelty is not None and want.novelty is not None
    assert np.allclose(scores.novelty, want.novelty, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("kind", "novelty"),
    [
        (ConfidenceKind.MAX_PROB, False),
        (ConfidenceKind.MARGIN, True),
        (ConfidenceKind.ENTROPY, True),
        (ConfidenceKind.ENTROPY, False),
    ],
)
async def test_the_loader_fuses_each_confidence_kind(
    demo: DemoArtifacts,
    held_out: npt.NDArray[np.float32],
    kind: ConfidenceKind,
    novelty: bool,
) -> None:
    served = await load_model(
        model_settings(demo, "edge", confidence=kind, novelty=novelty), "edge"
    )
    plain = await load_model(
        model_settings(demo, "edge", confidence=kind, novelty=novelty, fuse_scores=False), "edge"
    )
    assert served.fused is not None, "scored with numpy"
    assert (served.fused.novelty is not None) is novelty
    feeds: Feeds = {served.inputs[0].name: held_out}
    outputs = served.run(feeds)
    scores = served.score(feeds, outputs)
    assert sorted(outputs) == ["label", "probabilities"]
    want = plain.score(feeds, plain.run(feeds))
    assert scores.labels == want.labels
    _assert_confidence(scores.confidence, want.confidence, kind)
    if novelty:
        assert scores.novelty is not None and want.novelty is not None
        assert np.allclose(scores.novelty, want.novelty, rtol=1e-9, atol=0)
    else:
        assert scores.novelty is None and want.novelty is None


@pytest.fixture
def opset12_model(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "opset12.onnx"
    data = _classifier(12).SerializeToString()
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


async def test_the_loader_scores_an_unfusable_model_with_numpy(
    opset12_model: tuple[Path, str], rows: npt.NDArray[np.float32]
) -> None:
    path, sha256 = opset12_model
    served = await load_model(ModelSettings(name="small", path=path, sha256=sha256), "edge")
    assert served.fused is None
    assert [o.name for o in served.runner.model.outputs] == ["label", "probabilities"]
    feeds: Feeds = {"input": rows}
    outputs = served.run(feeds)
    assert sorted(outputs) == ["label", "probabilities"]
    scores = served.score(feeds, outputs)
    assert scores.labels == outputs["label"].tolist()
    assert np.array_equal(
        scores.confidence, confidence.score(outputs["probabilities"], ConfidenceKind.MAX_PROB)
    )


# ---------------------------------------------------------------------------------------------
# 6. OnnxModel with a fused graph


def test_onnx_model_hides_the_fused_outputs_but_runs_them(
    tmp_path: Path, scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    model = _classifier()
    path = tmp_path / "small.onnx"
    path.write_bytes(model.SerializeToString())
    fused, names = fuse(
        model, scored_output="probabilities", kind=ConfidenceKind.MAX_PROB, novelty=scorer
    )
    graph = fused.SerializeToString()

    hidden = OnnxModel.load(path, graph=graph, hidden_outputs=names.names)
    assert hidden.path == path
    assert [o.name for o in hidden.outputs] == ["label", "probabilities"]
    assert [o.name for o in hidden.inputs] == ["input"]
    out = hidden.run({"input": rows})
    assert list(out) == ["label", "probabilities", *names.names]
    assert np.array_equal(out[names.confidence], _run(fused, {"input": rows})[names.confidence])
    assert out[names.labels].tolist() == confidence.labels_of(out["probabilities"])

    assert [o.name for o in OnnxModel.load(path, graph=graph).outputs] == [
        "label",
        "probabilities",
        *names.names,
    ]
    from_file = OnnxModel.load(path, hidden_outputs=names.names)
    assert [o.name for o in from_file.outputs] == ["label", "probabilities"]
    assert list(from_file.run({"input": rows})) == ["label", "probabilities"]


def test_fused_outputs_names() -> None:
    assert FusedOutputs("c", "l", None).names == ("c", "l")
    assert FusedOutputs("c", "l", "n").names == ("c", "l", "n")


# ---------------------------------------------------------------------------------------------
# 7. the fused novelty flags NaN and infinite inputs


def test_the_fused_novelty_flags_nan_and_infinite_inputs(
    scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    fused, names = fuse(
        _classifier(), scored_output="probabilities", kind=ConfidenceKind.MAX_PROB, novelty=scorer
    )
    feeds: Feeds = {"input": rows[:8]}
    assert flags_non_finite(lambda f: _run(fused, f), feeds, names)
    for value in (np.nan, np.inf, -np.inf):
        for column in (0, 5, FEATURES - 1):
            bad = rows[:2].copy()
            bad[1, column] = value
            novelty = _run(fused, {"input": bad})[names.novelty or ""]
            assert np.isfinite(novelty[0]) and not np.isfinite(novelty[1])


def test_flags_non_finite_says_no_unless_the_run_shows_it(
    scorer: NoveltyScorer, rows: npt.NDArray[np.float32]
) -> None:
    fused, names = fuse(
        _classifier(), scored_output="probabilities", kind=ConfidenceKind.MAX_PROB, novelty=scorer
    )

    def run(feeds: Feeds) -> Feeds:
        return _run(fused, feeds)

    def finite_novelty(feeds: Feeds) -> Feeds:
        out = run(feeds)
        out[names.novelty or ""] = np.zeros(len(feeds["input"]))
        return out

    def refuses(feeds: Feeds) -> Feeds:
        if not np.isfinite(feeds["input"]).all():
            raise ValueError("NaN")
        return run(feeds)

    def nan_everywhere(feeds: Feeds) -> Feeds:
        out = run(feeds)
        out[names.novelty or ""] = np.full(len(feeds["input"]), np.nan)
        return out

    feeds: Feeds = {"input": rows[:8]}
    assert flags_non_finite(run, feeds, names)
    assert not flags_non_finite(finite_novelty, feeds, names)
    assert not flags_non_finite(refuses, feeds, names)
    assert not flags_non_finite(nan_everywhere, feeds, names)
    assert not flags_non_finite(run, {"input": rows[:3]}, names), "too few rows to try"
    assert not flags_non_finite(run, feeds, FusedOutputs(names.confidence, names.labels, None))
    assert not flags_non_finite(run, {"input": rows[:8], "other": rows[:8]}, names)
    assert not flags_non_finite(run, {"input": rows[:8].astype(np.int32)}, names)
    assert np.isfinite(feeds["input"]).all(), "the sample rows were changed"
