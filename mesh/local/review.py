"""The review service of a mesh run on one machine (``mesh up``): ``mesh review serve`` at the
hub as its own process, with the desk's and the intake's identities."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.local.cluster import Hub
from mesh.local.processes import MeshProcess
from mesh.local.servers import NatsServer
from mesh.security.identities import IdentitySpec
from mesh.security.permissions import Role
from mesh.topology.processes import REVIEW_READY

#: the identities of the review service and of the person ``mesh up`` prints creds for.
REVIEW_DESK = IdentitySpec("review-desk", Role.REVIEW_DESK)
REVIEW_INTAKE = IdentitySpec("review-intake", Role.REVIEW_INTAKE)
REVIEWER = IdentitySpec("reviewer", Role.REVIEWER)


class ReviewProcess(MeshProcess):
    """``mesh review serve``; ``http_url`` (its metrics) once it is ready."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        super().__init__("review", argv, log_path, REVIEW_READY, env)
        self.http_url = ""

    async def start(self, timeout: float = 60.0) -> None:
        await super().start(timeout)
        self.http_url = self._child.info.get("http", "")


async def start_review(
    hub: NatsServer | Hub,
    work_dir: Path,
    env: Mapping[str, str],
    command: tuple[str, ...],
    settings: Mapping[str, Any] | None = None,
) -> ReviewProcess:
    """The review service on ``hub`` (given every member of a clustered one), its identities
    issued by the hub's key store; ``settings`` (limits, costs: ``mesh.review.settings``) go in
    its settings file."""
    desk = await hub.issue(REVIEW_DESK)
    intake = await hub.issue(REVIEW_INTAKE)
    argv = [
        *command, "review", "serve", "--servers", hub.url, "--creds", str(desk),
        "--intake-creds", str(intake), "--http-port", "0",
    ]  # fmt: skip
    if settings:
        path = work_dir / "review.yaml"
        await asyncio.to_thread(path.write_text, json.dumps(dict(settings)), "utf-8")
        argv += ["--config", str(path)]
    process = ReviewProcess(argv, work_dir / "review.log", env)
    await process.start()
    return process


__all__ = ["REVIEWER", "ReviewProcess", "start_review"]
