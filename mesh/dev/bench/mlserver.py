"""The MLServer peer row: MLServer lives in a venv of its own (it is not a dependency), so the
row is measured when its ``mlserver`` command is found and starts, and marked unavailable, with
the reason, otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from mesh.dev.bench.roles import MLSERVER_MODEL, find_mlserver
from mesh.local.servers import free_port
from mesh.local.supervisor import ChildProcess


@dataclass(frozen=True)
class MlServerPeer:
    url: str | None = None
    process: psutil.Process | None = None
    unavailable: str | None = None

    def processes(self) -> list[psutil.Process]:
        """The server's process and its workers now, for the row's CPU."""
        if self.process is None:
            return []
        return [self.process, *self.process.children(recursive=True)]


async def start_mlserver_peer(
    explicit: str | None,
    model_path: Path,
    work: Path,
    stack: contextlib.AsyncExitStack,
    progress: Callable[[str], None],
) -> MlServerPeer:
    binary = find_mlserver(explicit)
    if binary is None:
        return MlServerPeer(
            unavailable="mlserver not found; pip install mlserver in a separate venv and "
            "pass --mlserver PATH"
        )
    progress(f"starting MLServer ({binary})")
    try:
        helper, url = await _start_mlserver(binary, model_path, work, stack)
        assert helper.pid is not None
        proc = psutil.Process(helper.pid)
    except Exception as exc:
        return MlServerPeer(unavailable=f"MLServer failed to start: {str(exc)[-300:]}")
    return MlServerPeer(url, proc)


async def _start_mlserver(
    binary: str, model_path: Path, work: Path, stack: contextlib.AsyncExitStack
) -> tuple[ChildProcess, str]:
    folder = work / "mlserver"
    folder.mkdir()
    (folder / "bench_model.py").write_text(MLSERVER_MODEL)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,
                "debug": False,
            }
        )
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "digits",
                "implementation": "bench_model.OnnxDigits",
                "parameters": {"uri": str(model_path)},
            }
        )
    )
    helper = ChildProcess(
        "mlserver", [binary, "start", str(folder)], work / "mlserver.log", cwd=folder
    )
    await helper.start()
    stack.push_async_callback(helper.stop)
    url = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as session:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(90.0):
                while helper.returncode is None:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get(f"{url}/v2/models/digits/ready") as resp:
                            if resp.status == 200:
                                return helper, url
                    await asyncio.sleep(0.25)
    tail = helper.log_path.read_text(errors="replace")[-1500:]
    raise RuntimeError(f"MLServer did not become ready: {tail}")
