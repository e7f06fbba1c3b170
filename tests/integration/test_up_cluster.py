"""``mesh up --hub-cluster 3 --sites 2`` (issue 31): the hub as a three-server cluster, two
sites; it prints what ``mesh up`` prints, answers, restarts a hub member that dies on its own
ports, and every process it started dies with it, even when it is killed outright."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.topology import processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MESH = (sys.executable, "-m", "mesh.cli")
#: what plain ``mesh up`` prints on stdout, in its order.
LINES = [
    processes.ENV_NATS_URL, processes.ENV_CREDS, processes.ENV_HTTP_URL, processes.ENV_GRPC_URL,
    processes.ENV_INGRESS_TOKEN, processes.ENV_HUB_URL, processes.ENV_CONTROLLER_CREDS,
    processes.ENV_SIGNING_KEY, processes.ENV_REVIEWER_CREDS, processes.ENV_CONSOLE_URL,
    processes.ENV_CONSOLE_TOKEN, processes.ENV_TRUSTED_KEYS,
]  # fmt: skip


async def read_lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode().rstrip())


async def until(lines: list[str], pattern: str, timeout: float) -> re.Match[str]:
    async with asyncio.timeout(timeout):
        while True:
            for line in lines:
                if found := re.search(pattern, line):
                    return found
            await asyncio.sleep(0.1)


async def test_mesh_up_with_a_clustered_hub_prints_serves_supervises_and_dies_whole(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *MESH, "up", "--cache", str(demo.root), "--hub-cluster", "3", "--sites", "2",
        "--keep-logs", str(tmp_path / "up"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    err: list[str] = []
    readers = [
        asyncio.create_task(read_lines(proc.stdout, out)),
        asyncio.create_task(read_lines(proc.stderr, err)),
    ]
    children: list[psutil.Process] = []
    try:
        await until(out, rf"^{processes.ENV_TRUSTED_KEYS}=", 240)
        assert [line.split("=", 1)[0] for line in out] == LINES, out
        env = dict(line.split("=", 1) for line in out)
        assert len(env[processes.ENV_HUB_URL].split(",")) == 3
        nodes = [line for line in err if re.match(r"^node \S+: pid \d+, http http://", line)]
        # the cloud, and each site's gateway and edge
        assert len(nodes) == 5, err
        assert any(re.match(r"^ingress: pid \d+", line) for line in err), err
        children = psutil.Process(proc.pid).children(recursive=True)

        sample = tmp_path / "x.npy"
        np.save(sample, np.load(demo.test)["x"][:1].astype(np.float32))
        infer = await asyncio.create_subprocess_exec(
            *MESH, "infer", "digits", str(sample), "--servers", env[processes.ENV_NATS_URL],
            "--creds", env[processes.ENV_CREDS], stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        answer, _ = await asyncio.wait_for(infer.communicate(), 60)
        assert infer.returncode == 0
        assert json.loads(answer)["tier"] in {"edge", "gateway", "cloud"}

        [member] = [c for c in children if "hub-1/server.conf" in " ".join(c.cmdline())]
        member.send_signal(signal.SIGKILL)
        await until(err, r"^nats-server hub-1 exited with status -9; restarting it$", 30)
        back = await until(err, r"^nats-server hub-1 restarted \(pid (\d+)\) on its own ports", 60)
        assert int(back.group(1)) != member.pid
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        # killed outright: nothing of it gets to stop its children, they go on their own
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 30)
        for reader in readers:
            reader.cancel()
    _, still = psutil.wait_procs(children, timeout=20)
    assert still == [], f"left running: {still}"
