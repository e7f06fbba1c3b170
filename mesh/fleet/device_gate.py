"""The device gate: a fetched version's single-row latency at p99, the memory loading it adds
and the energy of one inference on this device's profile, measured on this device, against the
budget its manifest declares."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from pathlib import Path

import numpy as np
import psutil

from mesh.energy.profiles import DeviceProfile
from mesh.errors import InvalidArgumentError
from mesh.models.manifest import ModelManifest
from mesh.models.session import open_session
from mesh.models.validate import device_for, energy_mj_of, judge, synthetic_rows

log = logging.getLogger("mesh.fleet.agent")

#: runs of the latency gate between two yields to the event loop (it runs on the loop: a
#: worker thread would time the wait for the GIL under load, not the model).
_GATE_CHUNK = 10
#: latency measurements before a version is judged over budget (the best one counts).
GATE_ATTEMPTS = 3
#: one device gate at a time in a process: a device runs one agent, but a simulated fleet runs
#: a hundred in one process, and gates timed together time each other.
_GATE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _gate_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _GATE_LOCKS.get(loop)
    if lock is None:
        lock = _GATE_LOCKS[loop] = asyncio.Lock()
    return lock


async def run_device_gate(
    manifest: ModelManifest,
    manifest_path: Path,
    *,
    runs: int,
    node: str,
    device: DeviceProfile | None = None,
) -> None:
    """Raise ``InvalidArgumentError`` when the version is over its budget here (one gate at a
    time in a process); energy is priced on ``device`` (by default, by the model's tier)."""
    async with _gate_lock():
        await _gate(manifest, manifest_path, runs, node, device_for(manifest, device))


async def _gate(
    manifest: ModelManifest, manifest_path: Path, runs: int, node: str, device: DeviceProfile
) -> None:
    """A device serving traffic is a noisy place to time a model: one burst can push a p99
    over budget. The latency is measured up to ``GATE_ATTEMPTS`` times, a moment apart, and
    the best p99 judged, so a version fails only when it is over budget every time."""
    artifact_path = manifest_path.parent / manifest.artifact
    before = await asyncio.to_thread(_rss)
    session = await asyncio.to_thread(open_session, artifact_path)
    after = await asyncio.to_thread(_rss)
    memory_mb = max(0.0, (after - before) / (1024 * 1024))
    rows = synthetic_rows(manifest, runs)
    feed = manifest.inputs[0].name
    output = manifest.scored_output
    for i in range(min(10, len(rows))):
        session.run([output], {feed: rows[i : i + 1]})
    p99 = cpu = float("inf")
    for attempt in range(GATE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.5)
        timings = np.empty(len(rows))
        spent = 0.0
        for start in range(0, len(rows), _GATE_CHUNK):
            # the thread's CPU clock around each chunk only: other work runs between chunks
            cpu_started = time.thread_time()
            for i in range(start, min(start + _GATE_CHUNK, len(rows))):
                t0 = time.perf_counter()
                session.run([output], {feed: rows[i : i + 1]})
                timings[i] = time.perf_counter() - t0
            spent += time.thread_time() - cpu_started
            await asyncio.sleep(0)
        p99 = min(p99, float(np.percentile(timings, 99) * 1e3))
        cpu = min(cpu, spent)
        if p99 <= manifest.profile.latency_p99_ms:
            break
    del session
    energy = energy_mj_of(cpu, len(rows), device)
    failures = judge(
        p99, memory_mb, None, manifest.profile, manifest.quality,
        energy_mj=energy, device=device.name,
    )  # fmt: skip
    if failures:
        raise InvalidArgumentError("fails the device gate: " + "; ".join(failures))
    log.info(
        "%s@%s passes the device gate on %s: p99 %.3f ms, +%.1f MB, %.4f mJ on %s",
        manifest.name,
        manifest.version,
        node,
        p99,
        memory_mb,
        energy,
        device.name,
    )


def _rss() -> int:
    rss: int = psutil.Process().memory_info().rss
    return rss
