"""A model whose outputs cannot be scored is refused at start, with what to change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from mesh.models.manifest import sha256_of
from mesh.node.repository import ModelConfigError, load_model
from mesh.settings import ModelSettings


def _iris_like(tmp_path: Path, *, zipmap: bool) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.repeat([0, 1, 2], 30)
    x += y[:, None]
    model = LogisticRegression(max_iter=500).fit(x, y)
    options = None if zipmap else {id(model): {"zipmap": False}}
    proto = to_onnx(model, x[:1], options=options, target_opset=17)
    path = tmp_path / f"iris-{'zipmap' if zipmap else 'tensor'}.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


async def test_the_default_scikit_learn_export_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = await _to_thread(_iris_like, tmp_path, zipmap=True)
    with pytest.raises(ModelConfigError) as refused:
        await load_model(ModelSettings(name="iris", path=path, sha256=await _sha(path)), "edge")
    message = str(refused.value)
    assert "ZipMap" in message and "'zipmap': False" in message


async def test_a_scored_output_that_is_not_probabilities_is_refused(tmp_path: Path) -> None:
    path = await _to_thread(_iris_like, tmp_path, zipmap=False)
    with pytest.raises(ModelConfigError, match="must hold class probabilities"):
        await load_model(
            ModelSettings(name="iris", path=path, sha256=await _sha(path), scored_output="label"),
            "edge",
        )
    with pytest.raises(ModelConfigError, match=r"its outputs are \['label', 'probabilities'\]"):
        await load_model(
            ModelSettings(name="iris", path=path, sha256=await _sha(path), scored_output="probs"),
            "edge",
        )


async def test_the_probabilities_tensor_export_loads_and_scores(tmp_path: Path) -> None:
    path = await _to_thread(_iris_like, tmp_path, zipmap=False)
    served = await load_model(
        ModelSettings(name="iris", path=path, sha256=await _sha(path)), "edge"
    )
    assert served.scored_output == "probabilities"


async def _to_thread(fn: object, *args: object, **kwargs: object) -> Path:
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)  # type: ignore[arg-type]


async def test_a_model_given_by_path_whose_bytes_do_not_match_its_sha256_is_refused(
    tmp_path: Path,
) -> None:
    from mesh.errors import InvalidArgumentError

    path = await _to_thread(_iris_like, tmp_path, zipmap=False)
    with pytest.raises(InvalidArgumentError, match="not the one configured"):
        await load_model(ModelSettings(name="iris", path=path, sha256="0" * 64), "edge")


async def _sha(path: Path) -> str:
    import asyncio

    return await asyncio.to_thread(sha256_of, path)
