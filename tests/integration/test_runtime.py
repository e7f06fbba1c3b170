from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mesh.errors import InvalidArgumentError, NotFoundError, UnavailableError
from mesh.node.batching import Feeds
from mesh.node.runtime import GraphTensor, ModelRunner, OnnxModel

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    pixels: np.ndarray = load_digits().data
    return (pixels / 16.0).astype(np.float32)


@pytest.fixture(scope="session")
def digits_model_path(tmp_path_factory: pytest.TempPathFactory, digits: np.ndarray) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(digits, load_digits().target)
    onnx_model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
    )
    path = tmp_path_factory.mktemp("models") / "digits-logreg.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def digits_model(digits_model_path: Path) -> OnnxModel:
    model = OnnxModel.load(digits_model_path)
    model.warmup()
    return model


def test_signature_is_read_from_the_session(digits_model_path: Path) -> None:
    model = OnnxModel.load(digits_model_path, intra_op_threads=1, inter_op_threads=1)
    assert model.inputs == [GraphTensor("input", "float32", (None, 64))]
    assert model.outputs == [
        GraphTensor("label", "int64", (None,)),
        GraphTensor("probabilities", "float32", (None, 10)),
    ]
    assert not model.warm
    assert model.estimate_seconds(1) is None


def test_run_gives_probabilities_that_sum_to_one(
    digits_model: OnnxModel, digits: np.ndarray
) -> None:
    out = digits_model.run({"input": digits[:20]})
    assert set(out) == {"label", "probabilities"}
    assert out["probabilities"].shape == (20, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert (out["label"] == out["probabilities"].argmax(axis=1)).all()


def test_warmup_measures_costs(digits_model: OnnxModel) -> None:
    assert digits_model.warm
    single = digits_model.single_row_seconds
    per_row = digits_model.per_row_seconds_batched
    assert single is not None and 0 < single < 0.01
    assert per_row is not None and 0 < per_row < single
    small, large = digits_model.estimate_seconds(1), digits_model.estimate_seconds(1000)
    assert small is not None and large is not None and large >= small


def test_missing_model_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        OnnxModel.load(tmp_path / "absent.onnx")


@pytest.mark.parametrize(
    "feeds",
    [
        {"input": np.zeros((2, 63), np.float32)},
        {"input": np.zeros((2, 64), np.float64)},
        {"input": np.zeros((64,), np.float32)},
        {"pixels": np.zeros((2, 64), np.float32)},
    ],
    ids=["trailing-shape", "dtype", "rank", "name"],
)
async def test_bad_input_is_invalid_argument(digits_model: OnnxModel, feeds: Feeds) -> None:
    with pytest.raises(InvalidArgumentError, match="INVALID_ARGUMENT"):
        digits_model.run(feeds)
    async with ModelRunner(digits_model) as runner:
        with pytest.raises(InvalidArgumentError):
            await runner.infer(feeds)
        ok = await runner.infer({"input": np.zeros((1, 64), np.float32)})
        assert ok["probabilities"].shape == (1, 10)


async def test_batched_results_equal_unbatched_for_200_concurrent_requests(
    digits_model: OnnxModel, digits: np.ndarray
) -> None:
    requests = [{"input": digits[i : i + 1 + i % 3]} for i in range(200)]
    async with ModelRunner(digits_model, max_batch_size=1) as unbatched:
        expected = await asyncio.gather(*(unbatched.infer(r) for r in requests))
    async with ModelRunner(
        digits_model, max_batch_size=32, max_delay_ms=2.0, inline_below_us=0.0
    ) as batched:
        got = await asyncio.gather(*(batched.infer(r) for r in requests))
        stats = batched.batcher.stats
    assert stats.requests == 200
    assert stats.batches < 200
    for want, have in zip(expected, got, strict=True):
        assert np.allclose(want["probabilities"], have["probabilities"], atol=1e-6)
        assert (want["label"] == have["label"]).all()


async def test_cheap_batches_run_inline_and_costly_ones_in_the_worker_thread(
    digits_model_path: Path, digits: np.ndarray
) -> None:
    model = await asyncio.to_thread(OnnxModel.load, digits_model_path)
    await asyncio.to_thread(model.warmup, 32, 3)
    model.single_row_seconds = 10e-6
    model.per_row_seconds_batched = 1e-6
    async with ModelRunner(model, max_batch_size=1, inline_below_us=150.0) as runner:
        await runner.infer({"input": digits[:1]})
        assert (runner.inline_batches, runner.executor_batches) == (1, 0)
        big = np.concatenate([digits] * 2)
        out = await runner.infer({"input": big})
        assert out["probabilities"].shape == (big.shape[0], 10)
        assert (runner.inline_batches, runner.executor_batches) == (1, 1)


async def test_runner_warms_a_cold_model_and_reports_state(digits_model_path: Path) -> None:
    model = await asyncio.to_thread(OnnxModel.load, digits_model_path)
    runner = ModelRunner(model)
    cold = runner.warm
    async with runner:
        assert not cold
        assert runner.warm
        assert runner.loaded_at > 0
        out = await runner.infer({"input": np.zeros((3, 64), np.float32)})
        assert out["probabilities"].shape == (3, 10)
    await runner.stop()
    with pytest.raises(UnavailableError):
        await runner.infer({"input": np.zeros((1, 64), np.float32)})
