"""The layering holds: pure modules and the data plane import no transport, production code no
development rig. Each import runs in a fresh interpreter, so nothing else loaded hides a leak."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRANSPORTS = ("nats", "aiohttp", "onnxruntime", "grpc")

PURE = [
    "mesh.node.policy",
    "mesh.scoring.confidence",
    "mesh.node.breaker",
    "mesh.node.latency",
    "mesh.node.batching",
    "mesh.scoring.novelty",
    "mesh.scoring.drift",
    "mesh.wire",
    "mesh.node.upstream",
    "mesh.lifecycle",
    "mesh.errors",
    "mesh.node.dataplane",
    "mesh.security.permissions",
    "mesh.security.identities",
    "mesh.node.answered",
    "mesh.fleet.rollout",
    "mesh.fleet.replay",
    "mesh.fleet.desired",
    "mesh.fleet.revocation",
]


def _modules_after_import(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_transport(module: str) -> None:
    loaded = _modules_after_import(module)
    leaked = sorted(name for name in loaded if name.split(".")[0] in TRANSPORTS)
    assert leaked == [], f"{module} pulled in {leaked[:5]}"


@pytest.mark.parametrize("module", ["mesh.node.tier", "mesh.services.node", "mesh.cli"])
def test_production_entry_points_take_nothing_from_the_development_rigs(module: str) -> None:
    loaded = _modules_after_import(module)
    rigs = sorted(name for name in loaded if name.startswith("mesh.dev"))
    assert rigs == [], f"{module} imported {rigs}"


def test_importing_mesh_does_not_import_the_sdk_until_it_is_used() -> None:
    loaded = _modules_after_import("mesh")
    assert "mesh.sdk.client" not in loaded
    assert not [name for name in loaded if name.split(".")[0] == "nats"]
