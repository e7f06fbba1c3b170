"""A bench run: the rig started, the load generator's clients connected, every row measured in
interleaved trials, the nodes' memory read, and the report built once every process is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mesh.dev.bench.calls import RowCalls, connect_clients
from mesh.dev.bench.config import BenchConfig
from mesh.dev.bench.measure import Row
from mesh.dev.bench.nodes import memory_of
from mesh.dev.bench.payloads import Payloads
from mesh.dev.bench.report import BenchReport, MemoryFigures, build_report
from mesh.dev.bench.rig import start_rig
from mesh.dev.bench.rows import bench_rows, ort_floor_row
from mesh.dev.bench.trials import run_trials
from mesh.dev.models.demo import ensure_demo
from mesh.local.phases import Phases
from mesh.models.manifest import artifact_path, load_manifest


async def run_bench(
    config: BenchConfig,
    cache: Path,
    mlserver: str | None,
    progress: Callable[[str], None],
    only: frozenset[str] | None = None,
) -> BenchReport:
    phases = Phases("mesh bench")
    async with phases.phase("models", 900, "the demo models' build"):
        demo = await asyncio.to_thread(ensure_demo, cache)
    edge_manifest = load_manifest(demo.edge_int8)
    edge_onnx = artifact_path(edge_manifest, demo.edge_int8)
    calibrated = edge_manifest.threshold_for("edge", 0.9)
    payloads = Payloads.of_split(demo.test)

    work = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        async with phases.phase("rig", 300, "the servers', nodes' and peers' ready lines"):
            rig = await start_rig(
                config, demo, calibrated=calibrated, edge_onnx=edge_onnx, mlserver=mlserver,
                work=work, stack=stack, progress=progress,
            )  # fmt: skip
        async with phases.phase("clients", 60, "the load generator's connections"):
            clients = await connect_clients(rig, config, stack)
            calls = await RowCalls.open(payloads, clients, rig, stack)
        rows = bench_rows(config, rig, calls, clients, calibrated)
        if only is not None:
            # rows left out are not measured: their figures and the ratios on them are null
            for key, row in rows.items():
                if key not in only:
                    row.call, row.unavailable = None, "not asked for (--rows)"
        floor = ort_floor_row(config)
        # ten minutes a trial is many times what one takes here: past it, a row is stuck
        async with phases.phase("trials", 600 * config.trials + 300) as phase:

            def step(text: str) -> None:
                phase.waiting_for(text)
                progress(text)

            await run_trials(
                config, list(rows.values()), floor, scraper=clients.scraper,
                edge_onnx=edge_onnx, floor_rows=payloads.rows, progress=step,
            )  # fmt: skip
        all_rows: dict[str, Row] = {"ort_floor": floor, **rows}
        memory: dict[str, MemoryFigures] = {
            name: memory_of(node.pid) for name, node in rig.nodes.items() if node.pid is not None
        }
    return build_report(config, all_rows, memory, calibrated=calibrated)
