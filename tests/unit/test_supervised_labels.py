"""The lines ``mesh up``'s supervisor prints when a process is back name that process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

from mesh.local.launcher import ControllerProcess, EmbeddedMesh
from mesh.local.layout import MeshLayout


def test_the_controller_back_line_names_the_controller_not_the_last_server(
    tmp_path: Path,
) -> None:
    mesh = EmbeddedMesh(MeshLayout(hub_cluster=3), work_dir=tmp_path)
    mesh.controller = cast(ControllerProcess, SimpleNamespace(name="controller-0", pid=4242))

    watched = mesh.watched()

    assert watched["controller controller-0"].restarted() == (
        "controller controller-0 restarted (pid 4242)"
    )
    servers = [label for label in watched if label.startswith("nats-server ")]
    # site servers join once started; the hub members are there from the start
    assert servers == [f"nats-server hub-{k}" for k in range(3)]
    for label in servers:
        assert watched[label].restarted().startswith(f"{label} restarted (pid ")
