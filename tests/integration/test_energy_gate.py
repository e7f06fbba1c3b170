"""Energy in the evidence gate: a version's joules per inference on the device profile, measured
as its latency is, against the manifest's ceiling. A deliberately heavy model (a real ONNX graph
of wide matrix products) is refused with the figures where the demo's edge model passes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mesh.dev.models.demo import DemoArtifacts
from mesh.energy.profiles import RPI4, X86_GATEWAY
from mesh.errors import InvalidArgumentError
from mesh.fleet.device_gate import run_device_gate
from mesh.models.manifest import (
    HardwareProfile,
    artifact_path,
    load_manifest,
    save_manifest,
    sha256_of,
)
from mesh.models.validate import require_valid, validate_model

#: a single-row inference of the edge model costs about 0.01 mJ on a Pi 4's profile here, the
#: heavy one about 0.3 mJ
CEILING_MJ = 0.1
WIDTH = 2048


def heavy_model(path: Path) -> None:
    """digits-shaped (64 features in, 10 probabilities out) through three 2048-wide layers:
    about 8.5 million multiply-adds a row, where the edge MLP does a few thousand."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.01).astype(np.float32), name)
        for name, shape in (
            ("w1", (64, WIDTH)),
            ("w2", (WIDTH, WIDTH)),
            ("w3", (WIDTH, WIDTH)),
            ("w4", (WIDTH, 10)),
        )
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["a1"]),
            helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
            helper.make_node("Relu", ["h2"], ["a2"]),
            helper.make_node("MatMul", ["a2", "w3"], ["h3"]),
            helper.make_node("Relu", ["h3"], ["a3"]),
            helper.make_node("MatMul", ["a3", "w4"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def with_ceiling(source: Path, folder: Path, name: str, onnx_file: Path | None = None) -> Path:
    """A copy of ``source``'s manifest (and its artifact, or ``onnx_file``) with the ceiling."""
    manifest = load_manifest(source)
    artifact = onnx_file or artifact_path(manifest, source)
    target = folder / f"{name}.onnx"
    target.write_bytes(artifact.read_bytes())
    manifest = manifest.model_copy(
        update={
            "version": name,
            "artifact": target.name,
            "sha256": sha256_of(target),
            "outputs": manifest.outputs[:1] if onnx_file else manifest.outputs,
            "profile": HardwareProfile(
                latency_p99_ms=1000.0, memory_mb=1024.0, energy_mj=CEILING_MJ
            ),
        }
    )
    path = folder / f"{name}.manifest.json"
    save_manifest(manifest, path)
    return path


@pytest.fixture
def heavy(demo: DemoArtifacts, tmp_path: Path) -> Path:
    onnx_file = tmp_path / "wide.onnx"
    heavy_model(onnx_file)
    return with_ceiling(demo.edge, tmp_path, "9-heavy", onnx_file)


def test_a_model_too_expensive_for_the_devices_power_is_refused_with_the_figures(
    demo: DemoArtifacts, heavy: Path, tmp_path: Path
) -> None:
    light = with_ceiling(demo.edge_int8, tmp_path, "1-light")
    passed = validate_model(light, demo.test, runs=100, device="rpi4")
    print(passed.summary())
    assert passed.passed and passed.energy_mj is not None and passed.energy_mj < CEILING_MJ
    refused = validate_model(heavy, None, runs=100, device="rpi4")
    print(refused.summary())
    assert refused.energy_mj is not None and refused.energy_mj > CEILING_MJ
    assert refused.failures == [
        f"energy {refused.energy_mj:.4f} mJ an inference on rpi4 is over the ceiling of "
        f"{CEILING_MJ:g} mJ"
    ]
    assert "energy" in refused.summary() and "FAIL" in refused.summary()
    assert refused.as_dict()["device"] == "rpi4"
    # the same CPU time is priced higher on a device whose busy core draws more
    on_gateway = validate_model(heavy, None, runs=50, device=X86_GATEWAY)
    assert on_gateway.energy_mj is not None
    assert on_gateway.energy_mj / X86_GATEWAY.active_w_per_core > 0
    with pytest.raises(InvalidArgumentError, match="refusing to serve") as caught:
        require_valid([light, heavy], demo.test, runs=50, devices=[RPI4, RPI4])
    assert "over the ceiling of 0.1 mJ" in str(caught.value)


async def test_the_device_gate_refuses_a_fetched_version_over_its_energy_ceiling(
    demo: DemoArtifacts, heavy: Path, tmp_path: Path
) -> None:
    light = await asyncio.to_thread(with_ceiling, demo.edge_int8, tmp_path, "1-light")
    light_manifest, heavy_manifest = await asyncio.gather(
        asyncio.to_thread(load_manifest, light), asyncio.to_thread(load_manifest, heavy)
    )
    await run_device_gate(light_manifest, light, runs=50, node="edge-0", device=RPI4)
    with pytest.raises(InvalidArgumentError, match="fails the device gate: energy") as caught:
        await run_device_gate(heavy_manifest, heavy, runs=50, node="edge-0", device=RPI4)
    assert "on rpi4 is over the ceiling of 0.1 mJ" in str(caught.value)
