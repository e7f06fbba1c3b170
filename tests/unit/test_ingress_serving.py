"""What the ingress counts as served, pure: the entry tier's nodes (as last asked over NATS) and
an edge hosted in the ingress's process (``mesh ingress --local``), for readiness, versions and
a call pinned to a version."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from mesh.errors import NotFoundError, UnavailableError
from mesh.ingress.core import Ingress, ServingState
from mesh.sdk.client import MeshClient
from mesh.settings import IngressSettings


@dataclass
class FakeConnection:
    is_connected: bool = True


@dataclass
class FakeHosted:
    models: dict[str, str] = field(default_factory=dict)

    def version_of(self, model: str) -> str | None:
        return self.models.get(model)

    def serving(self) -> bool:
        return bool(self.models)


@dataclass
class FakeClient:
    nc: FakeConnection
    local: FakeHosted | None = None


def ingress(client: FakeClient, nodes: dict[str, set[str]] | None = None) -> Ingress:
    out = Ingress(cast(MeshClient, client), {})
    if nodes is not None:
        out.state = ServingState(models=nodes, nodes=len(nodes), seen_at=time.monotonic())
    return out


def test_without_a_hosted_edge_it_is_ready_only_while_entry_nodes_report_models() -> None:
    connected = ingress(FakeClient(FakeConnection()), {"digits": {"v1"}})
    assert connected.ready() and connected.problems() == {}
    assert connected.versions("digits") == ["v1"]
    cut = ingress(FakeClient(FakeConnection(is_connected=False)), {"digits": {"v1"}})
    assert not cut.ready() and cut.problems() == {"nats": "not connected to NATS"}
    nobody = ingress(FakeClient(FakeConnection()))
    assert not nobody.ready() and "mesh" in nobody.problems()
    with pytest.raises(NotFoundError):
        nobody.require_model("digits", None)


def test_a_hosted_edge_serves_with_nats_down_and_its_version_is_listed() -> None:
    hosted = FakeHosted({"digits": "v2"})
    cut = ingress(FakeClient(FakeConnection(is_connected=False), hosted))
    assert cut.ready() and cut.problems() == {}
    assert cut.versions("digits") == ["v2"]
    assert cut.model_ready("digits", None) and cut.model_ready("digits", "v2")
    assert not cut.model_ready("digits", "v1")
    cut.require_model("digits", "v2")
    cut.require_ready_version("digits", "v2")
    with pytest.raises(NotFoundError, match="has no version 'v1'"):
        cut.require_model("digits", "v1")
    with pytest.raises(NotFoundError):
        cut.require_model("other", None)


def test_the_hosted_edge_and_the_entry_nodes_together() -> None:
    both = ingress(FakeClient(FakeConnection(), FakeHosted({"digits": "v2"})), {"digits": {"v1"}})
    assert both.versions("digits") == ["v1", "v2"]
    both.require_ready_version("digits", "v1")
    both.require_ready_version("digits", "v2")
    with pytest.raises(UnavailableError, match="not ready"):
        both.require_ready_version("digits", "v3")
    # a hosted edge that serves nothing (yet) leaves readiness to the entry nodes
    idle = ingress(FakeClient(FakeConnection(is_connected=False), FakeHosted()), {})
    assert not idle.ready() and idle.problems() == {"nats": "not connected to NATS"}


def test_the_hosted_edges_settings_file_is_relative_to_the_ingress_settings(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "ingress.yaml").write_text("local: edge.yaml\nmanifests: [digits.json]\n")
    settings = IngressSettings.load(folder / "ingress.yaml")
    assert settings.local == folder / "edge.yaml"
    assert settings.manifests == [folder / "digits.json"]
    assert IngressSettings.load(None).local is None
