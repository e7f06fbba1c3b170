"""Prometheus's view of a deployment: ``promtool check metrics`` on a service's exposition, and a
real Prometheus run with a deployment's scrape configuration to see which targets are up."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import aiohttp

from mesh.local.servers import free_port
from tests.fixtures.commands import stop_child

#: what `make system-deps` installs; tests that need it skip with this reason where it did not run.
SYSTEM_DEPS = "run `make system-deps` (Debian's prometheus package) first"


def promtool() -> str | None:
    return shutil.which("promtool")


def check_metrics(exposition: str, service: str) -> None:
    """``promtool check metrics``: no error and no lint problem (names, units, help texts)."""
    tool = promtool()
    assert tool is not None, SYSTEM_DEPS
    done = subprocess.run(
        [tool, "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    problems = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not problems, f"{service}: {problems}"
    assert "otel_scope_" not in exposition, f"{service} labels every series with otel_scope_*"


@contextlib.asynccontextmanager
async def running_prometheus(binary: str, config: str, work: Path) -> AsyncIterator[str]:
    def prepare() -> tuple[Path, BinaryIO]:
        work.mkdir(parents=True, exist_ok=True)
        path = work / "prometheus.yml"
        path.write_text(config)
        return path, (work / "prometheus.log").open("wb")

    path, log = await asyncio.to_thread(prepare)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={path}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop_child(proc, 15)
        log.close()


async def prometheus_targets_up(
    binary: str, config: str, work: Path, jobs: tuple[str, ...] = ("mesh-node", "mesh-ingress")
) -> dict[str, dict[str, bool]]:
    """Job to target to up, once every target of ``jobs`` was scraped (or 60 s passed)."""
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    async with running_prometheus(binary, config, work) as base, aiohttp.ClientSession() as session:
        seen: dict[str, dict[str, bool]] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/api/v1/targets") as resp:
                    if resp.status == 200:
                        body = await resp.json()
                        seen = {}
                        for target in body["data"]["activeTargets"]:
                            job = target["labels"]["job"]
                            seen.setdefault(job, {})[target["scrapeUrl"]] = target["health"] == "up"
                        if all(seen.get(j) and all(seen[j].values()) for j in jobs):
                            return seen
            await asyncio.sleep(0.5)
        return seen
