"""The layering holds: pure modules and the data plane import no transport, production code no
development rig. Each import runs in a fresh interpreter, so nothing else loaded hides a leak."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

TRANSPORTS = ("nats", "aiohttp", "onnxruntime", "grpc")

#: the ingress's protocol, caller and admission logic, apart from its HTTP and gRPC servers.
PURE_INGRESS = [
    "mesh.ingress.oip",
    "mesh.ingress.oip_rest",
    "mesh.ingress.callers",
    "mesh.ingress.shares",
    "mesh.ingress.gate",
    "mesh.ingress.steps",
]

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
    "mesh.node.shadow",
    "mesh.learn.export",
    "mesh.learn.train",
    "mesh.security.permissions",
    "mesh.security.identities",
    "mesh.node.answered",
    "mesh.fleet.rollout",
    "mesh.fleet.replay",
    "mesh.fleet.desired",
    "mesh.fleet.revocation",
    *PURE_INGRESS,
    "mesh.energy.ledger",
    "mesh.energy.governor",
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


# ---- the whole tree, statically: every module's imports at import time ----------------------

ROOT = Path(__file__).resolve().parents[2]

#: packages and modules that import no transport, however they are reached.
PURE_TREES = [
    "mesh.topology",
    "mesh.scoring",
    "mesh.wire",
    "mesh.fleet.rollout",
    "mesh.node.policy",
    "mesh.node.breaker",
    "mesh.node.latency",
    "mesh.node.batching",
    "mesh.node.upstream",
    "mesh.node.dataplane",
    "mesh.node.outcomes",
    "mesh.node.audits",
    "mesh.node.admission",
    "mesh.node.evidence",
    "mesh.node.answered",
    "mesh.fleet.liveness",
    "mesh.fleet.desired",
    "mesh.fleet.replay",
    "mesh.fleet.revocation",
    "mesh.fleet.signing",
    "mesh.fleet.refusals",
    "mesh.models.bump",
    "mesh.security.permissions",
    "mesh.security.identities",
    "mesh.security.creds",
    "mesh.models.manifest",
    "mesh.errors",
    "mesh.lifecycle",
    "mesh.review.records",
    "mesh.review.sampling",
    "mesh.review.ledger",
    "mesh.review.truth",
    "mesh.console.markup",
    "mesh.console.access",
    "mesh.console.fleetboard",
    "mesh.console.rolloutboard",
    "mesh.console.quality",
    "mesh.console.charts",
    "mesh.console.figure",
    "mesh.console.actions",
    "mesh.console.layout",
    "mesh.console.page_fleet",
    "mesh.console.page_rollouts",
    "mesh.console.page_review",
    "mesh.console.page_quality",
    "mesh.review.api",
    *PURE_INGRESS,
    "mesh.energy",
    "mesh.node.escalation",
]


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in (ROOT / "mesh").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def _imported_at_import_time(tree: ast.Module) -> list[str]:
    """Names a module imports when it is imported: module-level statements (and those under a
    module-level ``if``/``try``), not function bodies and not ``if TYPE_CHECKING`` blocks."""
    names: list[str] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                stack += handler.body
    return names


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for imported in _imported_at_import_time(ast.parse(path.read_text())):
            if imported.split(".")[0] != "mesh":
                edges.add(imported.split(".")[0])
                continue
            parts = imported.split(".")
            # the deepest mesh module the name resolves to, and every package on the way
            for end in range(1, len(parts) + 1):
                if ".".join(parts[:end]) in files:
                    edges.add(".".join(parts[:end]))
        graph[name] = edges
    return graph


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += graph.get(name, ())
    return seen


def test_pure_packages_import_no_transport_however_reached() -> None:
    graph = _graph()
    leaks = {}
    for root in PURE_TREES:
        for name in [n for n in graph if n == root or n.startswith(root + ".")]:
            reached = _closure(graph, name)
            bad = sorted(reached & set(TRANSPORTS))
            if bad:
                leaks[name] = bad
    assert leaks == {}


def test_no_production_module_imports_the_development_package() -> None:
    graph = _graph()
    offenders = {}
    for name in graph:
        if name == "mesh.dev" or name.startswith("mesh.dev."):
            continue
        dev = sorted(n for n in _closure(graph, name) if n.startswith("mesh.dev"))
        if dev:
            offenders[name] = dev[:3]
    assert offenders == {}
