"""``mesh bench``: the mesh against the physical floor and against peers, in one run.

How it is measured (the decisions the issue asks to write down):

- The bench process is the load generator and nothing else: every server is its own process
  (nats-server hub and two site leaf servers, the tier nodes, the echo responder, the aiohttp
  peer, MLServer, and the fault proxy on the slow leaf link). The one exception is the
  ONNX Runtime floor, which is by definition in-process.
- Every configuration runs at once, so rows can be interleaved trial by trial: a trial runs each
  row once (order rotated per trial), so minute-to-minute drift hits all rows alike. Figures are
  medians over trials; ratios are medians of the per-trial ratios (paired by trial).
- A row's trial is ``latency_n`` requests one at a time (p50/p99 at concurrency 1), then
  ``throughput_n`` requests with ``concurrency`` in flight (requests per second).
- Payload: one digits row, float32 (1, 64), cycling through the held-out split, the same row
  sequence for every row. Mesh rows go through the SDK (``MeshClient.infer``); the echo sends
  the msgpack ``InferRequest`` the SDK would send (same bytes on the wire); the HTTP peers get
  the same row as JSON (what teams hand-roll, and the V2 protocol for MLServer).
- Topology: hub (cloud node) with two leaf servers. ``site`` dials the hub directly; ``site2``
  dials it through a fault proxy process adding 20 ms each way (40 ms round trip). Each mesh row
  is its own tier name on those servers, so rows never share a queue group: ``edge`` (threshold
  0, answers everything, on ``site``), ``edgeesc`` (threshold 1.01, upstream cloud, ``site``),
  ``edgelink`` (threshold 1.01, ``site2``) and ``edgemix`` (the calibrated threshold, ``site2``).
- CPU per 1,000 requests: user + system time of the row's server processes (the nodes and
  nats-servers a request crosses, the echo responder, the peer's process tree) over a trial,
  divided by the requests of that trial. The fault proxy stands for the WAN and is not counted;
  neither is the load generator.

``python -m services.bench <role>`` runs the helper servers (echo, peer, proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from mesh.launcher import die_with_parent

ECHO_SUBJECT = "bench.echo"
READY = "BENCH_READY"
MESH_BUDGET_MS = 5000.0
MiB = 1024.0 * 1024.0

Floats = npt.NDArray[np.float32]
Call = Callable[[int], Awaitable[str]]


@dataclass(frozen=True)
class BenchConfig:
    trials: int
    latency_n: int
    throughput_n: int
    link_latency_n: int
    link_throughput_n: int
    concurrency: int = 64
    warmup_n: int = 20
    link_ms_one_way: float = 20.0

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(
            trials=5, latency_n=400, throughput_n=3000, link_latency_n=40, link_throughput_n=640
        )

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            trials=1,
            latency_n=20,
            throughput_n=128,
            link_latency_n=4,
            link_throughput_n=64,
            warmup_n=5,
        )


@dataclass
class Trial:
    p50_ms: float | None
    p99_ms: float | None
    throughput_rps: float | None
    cpu_ms_per_1k: float | None
    requests: int
    errors: int
    answered_by: Counter[str]


@dataclass
class Row:
    key: str
    label: str
    call: Call | None
    processes: list[psutil.Process]
    latency_n: int
    throughput_n: int
    note: str = ""
    unavailable: str | None = None
    trials: list[Trial] = field(default_factory=list)


# --------------------------------------------------------------------------- helper processes


class HelperProcess:
    """A child process; ready when it prints ``BENCH_READY key=value...`` or ``ready()`` holds."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.info: dict[str, str] = {}
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self, timeout: float = 60.0, *, wait_line: bool = True) -> None:
        log = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=asyncio.subprocess.PIPE if wait_line else log,
                stderr=log,
                cwd=self.cwd,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()
        if wait_line:
            await asyncio.wait_for(self._ready_line(), timeout)

    async def _ready_line(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited during start-up:\n{tail}")
            text = line.decode(errors="replace").strip()
            if text.startswith(READY):
                for part in text.split()[1:]:
                    key, _, value = part.partition("=")
                    self.info[key] = value
                return

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _wait_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_echo(url: str, subject: str) -> None:
    """A bare nats-py responder: every request gets its own payload back."""
    import nats
    from nats.aio.msg import Msg

    nc = await nats.connect(url, name="bench-echo")

    async def echo(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(subject, cb=echo)
    await nc.flush()
    print(f"{READY} subject={subject}", flush=True)
    await _wait_stop_signal()
    await nc.drain()


async def serve_peer(model_path: Path) -> None:
    """A hand-rolled HTTP model server: aiohttp + ONNX Runtime inline, JSON in and out."""
    from aiohttp import web

    from mesh.runtime import OnnxModel

    model = OnnxModel.load(model_path)
    input_name = model.inputs[0].name

    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        x = np.asarray(body["inputs"], dtype=np.float32)
        outputs = model.run({input_name: x})
        return web.json_response(
            {"label": outputs["label"].tolist(), "probabilities": outputs["probabilities"].tolist()}
        )

    app = web.Application()
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"{READY} port={port}", flush=True)
    try:
        await _wait_stop_signal()
    finally:
        await runner.cleanup()


async def serve_proxy(target: str, latency_ms: float) -> None:
    """The WAN: a fault proxy with added one-way latency, in its own process."""
    from mesh.faults import FaultProxy

    host, _, port = target.rpartition(":")
    async with FaultProxy(host, int(port)) as proxy:
        proxy.set_latency(latency_ms)
        print(f"{READY} port={proxy.port}", flush=True)
        await _wait_stop_signal()


MLSERVER_MODEL = """
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxDigits(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        values = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, np.asarray(v))
                     for n, v in zip(self._outputs, values)],
        )
"""


def find_mlserver(explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else None
    # MLServer is not a dependency (72 packages): install it in a venv of its own and point
    # --mlserver or MESH_BENCH_MLSERVER at its `mlserver` command, or put that on PATH.
    return shutil.which("mlserver")


# --------------------------------------------------------------------------------- measurement


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def _cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


async def run_trial(row: Row, concurrency: int) -> Trial:
    assert row.call is not None
    call = row.call
    answered: Counter[str] = Counter()
    errors = 0
    latencies: list[float] = []
    cpu_before = _cpu_seconds(row.processes)
    for i in range(row.latency_n):
        started = time.perf_counter()
        try:
            tier = await call(i)
        except Exception:
            errors += 1
            continue
        latencies.append(time.perf_counter() - started)
        answered[tier] += 1

    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < row.throughput_n:
            i = next_index
            next_index += 1
            try:
                answered[await call(i)] += 1
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(row.processes) - cpu_before
    requests = row.latency_n + row.throughput_n
    ok_throughput = row.throughput_n - max(0, errors - (row.latency_n - len(latencies)))
    p50 = _percentile(latencies, 50)
    p99 = _percentile(latencies, 99)
    return Trial(
        p50_ms=p50 * 1000 if p50 is not None else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
        throughput_rps=ok_throughput / elapsed if elapsed > 0 else None,
        cpu_ms_per_1k=cpu * 1000 / requests * 1000 if row.processes else None,
        requests=requests,
        errors=errors,
        answered_by=answered,
    )


def ort_floor_trial(model_path: Path, rows: Sequence[Floats], n: int) -> Trial:
    """Raw ``InferenceSession.run`` on one row, in this process: the floor of any serving."""
    from mesh.runtime import OnnxModel

    model = OnnxModel.load(model_path)
    session, name = model.session, model.inputs[0].name
    for x in rows[:20]:
        session.run(None, {name: x})
    times: list[float] = []
    cpu_before = time.process_time()
    for i in range(n):
        x = rows[i % len(rows)]
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_before
    p50 = _percentile(times, 50) or 0.0
    p99 = _percentile(times, 99) or 0.0
    return Trial(
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
        throughput_rps=n / sum(times) if times else None,
        cpu_ms_per_1k=cpu * 1000 / n * 1000,
        requests=n,
        errors=0,
        answered_by=Counter({"in-process": n}),
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def summarize(row: Row) -> dict[str, Any]:
    if row.unavailable is not None:
        return {"label": row.label, "available": False, "note": f"not available: {row.unavailable}"}
    answered: Counter[str] = Counter()
    for t in row.trials:
        answered.update(t.answered_by)
    return {
        "label": row.label,
        "available": True,
        "note": row.note,
        "p50_ms": _median([t.p50_ms for t in row.trials]),
        "p99_ms": _median([t.p99_ms for t in row.trials]),
        "throughput_rps": _median([t.throughput_rps for t in row.trials]),
        "cpu_ms_per_1k": _median([t.cpu_ms_per_1k for t in row.trials]),
        "requests": sum(t.requests for t in row.trials),
        "errors": sum(t.errors for t in row.trials),
        "answered_by": dict(answered),
        "trials": [
            {
                "p50_ms": t.p50_ms,
                "p99_ms": t.p99_ms,
                "throughput_rps": t.throughput_rps,
                "cpu_ms_per_1k": t.cpu_ms_per_1k,
                "errors": t.errors,
            }
            for t in row.trials
        ],
    }


def paired_ratio(rows: dict[str, Row], top: str, bottom: str, attr: str) -> float | None:
    """Median over trials of ``top.attr / bottom.attr`` within the same trial."""
    a, b = rows.get(top), rows.get(bottom)
    if a is None or b is None:
        return None
    ratios = []
    for ta, tb in zip(a.trials, b.trials, strict=False):
        va, vb = getattr(ta, attr), getattr(tb, attr)
        if va is not None and vb:
            ratios.append(va / vb)
    return float(statistics.median(ratios)) if ratios else None


# ------------------------------------------------------------------------------------ the rig


def _node_settings(
    tier: str, server: str, manifest: Path, *, threshold: float | None, upstream: bool, entry: bool
) -> dict[str, Any]:
    model: dict[str, Any] = {"name": "digits", "manifest": str(manifest)}
    if threshold is not None:
        model["threshold"] = threshold
    settings: dict[str, Any] = {
        "tier": tier,
        "node": f"{tier}-0",
        "zone": "cloud" if tier == "cloud" else "device",
        "entry": entry,
        "nats": {"servers": [server]},
        "models": [model],
        "http_port": 0,
        "hard_examples": {"upstream_domain": "hub"},
    }
    if upstream:
        settings["upstream"] = {"tier": "cloud", "zone": "cloud"}
    return settings


def _vm_hwm_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def _rss_mb(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss / MiB
    return None


async def _start_mlserver(
    binary: str, model_path: Path, work: Path, stack: contextlib.AsyncExitStack
) -> tuple[HelperProcess, str]:
    from mesh.embedded import free_port

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
    helper = HelperProcess(
        "mlserver", [binary, "start", str(folder)], work / "mlserver.log", cwd=folder
    )
    await helper.start(wait_line=False)
    stack.push_async_callback(helper.stop)
    url = f"http://127.0.0.1:{http_port}"
    import aiohttp

    deadline = time.monotonic() + 90.0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{url}/v2/models/digits/ready") as resp:
                    if resp.status == 200:
                        return helper, url
            if helper._proc is not None and helper._proc.returncode is not None:
                break
            await asyncio.sleep(0.25)
    tail = helper.log_path.read_text(errors="replace")[-1500:]
    raise RuntimeError(f"MLServer did not become ready: {tail}")


async def run_bench(
    config: BenchConfig, cache: Path, mlserver: str | None, progress: Callable[[str], None]
) -> dict[str, Any]:
    import aiohttp
    import nats

    from mesh import wire
    from mesh.client import DEFAULT_INPUT, MeshClient
    from mesh.embedded import NatsServer, ServerConfig
    from mesh.launcher import NodeProcess
    from mesh.models.demo import ensure_demo
    from mesh.models.manifest import artifact_path, load_manifest

    demo = await asyncio.to_thread(ensure_demo, cache)
    edge_manifest = load_manifest(demo.edge_int8)
    edge_onnx = artifact_path(edge_manifest, demo.edge_int8)
    calibrated = edge_manifest.threshold_for("edge", 0.9)
    test_x = np.load(demo.test)["x"].astype(np.float32)
    rows_x: list[Floats] = [np.ascontiguousarray(test_x[i : i + 1]) for i in range(len(test_x))]
    payloads = [
        wire.encode_request(
            wire.InferRequest(
                id=f"{i:032x}",
                model="digits",
                inputs={DEFAULT_INPUT: x},
                budget_ms=MESH_BUDGET_MS,
                residency="any",
            )
        )
        for i, x in enumerate(rows_x)
    ]
    bodies_json = [x.tolist() for x in rows_x]

    work = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    py = sys.executable
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        progress("starting NATS hub, two site leaf servers and the 40 ms link")
        hub = NatsServer(
            ServerConfig(name="hub", jetstream_domain="hub", accept_leafnodes=True), work / "hub"
        )
        await hub.start()
        stack.push_async_callback(hub.stop)
        proxy = HelperProcess(
            "proxy",
            [
                py,
                "-m",
                "services.bench",
                "proxy",
                "--target",
                f"127.0.0.1:{hub.leaf_port}",
                "--latency-ms",
                str(config.link_ms_one_way),
            ],
            work / "proxy.log",
        )
        await proxy.start()
        stack.push_async_callback(proxy.stop)
        site = NatsServer(
            ServerConfig(name="site", jetstream_domain="site", leaf_remotes=[hub.leafnode_url]),
            work / "site",
        )
        site2 = NatsServer(
            ServerConfig(
                name="site2",
                jetstream_domain="site2",
                leaf_remotes=[f"nats-leaf://127.0.0.1:{proxy.info['port']}"],
            ),
            work / "site2",
        )
        for server in (site, site2):
            await server.start()
            stack.push_async_callback(server.stop)
        await hub.wait_leaf_connections(2)

        progress("starting tier nodes, echo responder and HTTP peers")
        nodes = {
            "cloud": NodeProcess(
                "cloud",
                _node_settings(
                    "cloud", hub.url, demo.cloud, threshold=None, upstream=False, entry=False
                ),
                work,
            ),
            "edge": NodeProcess(
                "edge",
                _node_settings(
                    "edge", site.url, demo.edge_int8, threshold=0.0, upstream=True, entry=True
                ),
                work,
            ),
            "edgeesc": NodeProcess(
                "edgeesc",
                _node_settings(
                    "edgeesc", site.url, demo.edge_int8, threshold=1.01, upstream=True, entry=False
                ),
                work,
            ),
            "edgelink": NodeProcess(
                "edgelink",
                _node_settings(
                    "edgelink",
                    site2.url,
                    demo.edge_int8,
                    threshold=1.01,
                    upstream=True,
                    entry=False,
                ),
                work,
            ),
            "edgemix": NodeProcess(
                "edgemix",
                _node_settings(
                    "edgemix",
                    site2.url,
                    demo.edge_int8,
                    threshold=calibrated,
                    upstream=True,
                    entry=False,
                ),
                work,
            ),
        }
        for node in nodes.values():
            stack.push_async_callback(node.stop)
        echo = HelperProcess(
            "echo", [py, "-m", "services.bench", "echo", "--url", site.url], work / "echo.log"
        )
        peer = HelperProcess(
            "peer",
            [py, "-m", "services.bench", "peer", "--model", str(edge_onnx)],
            work / "peer.log",
        )
        for helper in (echo, peer):
            stack.push_async_callback(helper.stop)
        await asyncio.gather(*(n.start() for n in nodes.values()), echo.start(), peer.start())

        ml_url: str | None = None
        ml_proc: psutil.Process | None = None
        ml_unavailable: str | None = None
        ml_binary = find_mlserver(mlserver)
        if ml_binary is None:
            ml_unavailable = (
                "mlserver not found; pip install mlserver in a separate venv and "
                "pass --mlserver PATH"
            )
        else:
            progress(f"starting MLServer ({ml_binary})")
            try:
                ml_helper, ml_url = await _start_mlserver(ml_binary, edge_onnx, work, stack)
                ml_proc = psutil.Process(ml_helper.pid)
            except Exception as exc:
                ml_unavailable = f"MLServer failed to start: {str(exc)[-300:]}"

        def procs(*pids: int | None) -> list[psutil.Process]:
            return [psutil.Process(p) for p in pids if p is not None]

        nc_site = await nats.connect(site.url, name="bench-client-site")
        stack.push_async_callback(nc_site.close)
        nc_site2 = await nats.connect(site2.url, name="bench-client-site2")
        stack.push_async_callback(nc_site2.close)
        client_site = MeshClient(nc_site, owns_connection=False)
        client_site2 = MeshClient(nc_site2, owns_connection=False)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=config.concurrency))
        stack.push_async_callback(http.close)
        n_rows = len(rows_x)

        def mesh_call(client: MeshClient, tier: str | None) -> Call:
            async def call(i: int) -> str:
                result = await client.infer(
                    "digits", rows_x[i % n_rows], budget_ms=MESH_BUDGET_MS, tier=tier
                )
                return result.tier

            return call

        async def echo_call(i: int) -> str:
            await nc_site.request(ECHO_SUBJECT, payloads[i % n_rows], timeout=5.0)
            return "echo"

        peer_url = f"http://127.0.0.1:{peer.info['port']}/predict"

        async def peer_call(i: int) -> str:
            async with http.post(peer_url, json={"inputs": bodies_json[i % n_rows]}) as resp:
                resp.raise_for_status()
                await resp.json()
            return "peer"

        async def mlserver_call(i: int) -> str:
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": bodies_json[i % n_rows][0],
                    }
                ]
            }
            async with http.post(f"{ml_url}/v2/models/digits/infer", json=body) as resp:
                resp.raise_for_status()
                await resp.json()
            return "mlserver"

        pid = {name: node.pid for name, node in nodes.items()}
        ml_procs: list[psutil.Process] = []
        if ml_proc is not None:
            ml_procs = [ml_proc, *ml_proc.children(recursive=True)]
        lat, tp = config.latency_n, config.throughput_n
        llat, ltp = config.link_latency_n, config.link_throughput_n
        rows: dict[str, Row] = {
            "nats_echo": Row(
                "nats_echo",
                "floor: nats-py echo, separate process",
                echo_call,
                procs(site.pid, echo.pid),
                lat,
                tp,
            ),
            "mesh_edge": Row(
                "mesh_edge",
                "mesh: edge-answered (threshold 0)",
                mesh_call(client_site, None),
                procs(site.pid, pid["edge"]),
                lat,
                tp,
            ),
            "mesh_escalated": Row(
                "mesh_escalated",
                "mesh: escalated edge->cloud, direct link",
                mesh_call(client_site, "edgeesc"),
                procs(site.pid, hub.pid, pid["edgeesc"], pid["cloud"]),
                lat,
                tp,
            ),
            "mesh_link_escalated": Row(
                "mesh_link_escalated",
                "mesh: escalated, link +40 ms RTT",
                mesh_call(client_site2, "edgelink"),
                procs(site2.pid, hub.pid, pid["edgelink"], pid["cloud"]),
                llat,
                ltp,
            ),
            "mesh_link_mix": Row(
                "mesh_link_mix",
                f"mesh: digits mix, link +40 ms RTT (t={calibrated:.3f})",
                mesh_call(client_site2, "edgemix"),
                procs(site2.pid, hub.pid, pid["edgemix"], pid["cloud"]),
                lat,
                ltp,
            ),
            "cloud_only_link": Row(
                "cloud_only_link",
                "cloud-only: tier=cloud, link +40 ms RTT",
                mesh_call(client_site2, "cloud"),
                procs(site2.pid, hub.pid, pid["cloud"]),
                llat,
                ltp,
            ),
            "peer_aiohttp": Row(
                "peer_aiohttp",
                "peer: aiohttp + ONNX Runtime, JSON",
                peer_call,
                procs(peer.pid),
                lat,
                tp,
            ),
            "peer_mlserver": Row(
                "peer_mlserver",
                "peer: MLServer (ONNX MLModel), V2 JSON",
                mlserver_call if ml_url else None,
                ml_procs,
                lat,
                tp,
                unavailable=ml_unavailable,
            ),
        }
        rows["mesh_edge"].note = "novelty check stays on: ~1% out-of-distribution rows escalate"
        rows["mesh_link_mix"].note = "most answered at the edge; see answered_by"
        rows["peer_mlserver"].note = "parallel_workers=0 (model in the server process)"
        floor = Row(
            "ort_floor", "floor: ONNX Runtime in-process (edge int8)", None, [], max(lat, 1000), 0
        )
        floor.note = "req/s here is sequential session.run calls in one thread"
        live = [r for r in rows.values() if r.call is not None]

        progress("warming up")
        warm = config.warmup_n
        for row in live:
            saved = (row.latency_n, row.throughput_n)
            row.latency_n, row.throughput_n = warm, warm
            await run_trial(row, config.concurrency)
            row.latency_n, row.throughput_n = saved

        for trial in range(config.trials):
            order = live[trial % len(live) :] + live[: trial % len(live)]
            for row in order:
                progress(f"trial {trial + 1}/{config.trials}: {row.label}")
                row.trials.append(await run_trial(row, config.concurrency))
            floor.trials.append(
                await asyncio.to_thread(ort_floor_trial, edge_onnx, rows_x, floor.latency_n)
            )

        all_rows = {"ort_floor": floor, **rows}
        memory = {
            name: {"rss_mb": _rss_mb(p), "peak_rss_mb": _vm_hwm_mb(p)}
            for name, p in pid.items()
            if p is not None
        }
        edge_rss = memory["edge"]["rss_mb"]

    ratios = {
        "edge_p50_over_echo_p50": paired_ratio(all_rows, "mesh_edge", "nats_echo", "p50_ms"),
        "throughput_over_echo": paired_ratio(all_rows, "mesh_edge", "nats_echo", "throughput_rps"),
        "cloud_only_p50_over_mesh_p50": paired_ratio(
            all_rows, "cloud_only_link", "mesh_link_mix", "p50_ms"
        ),
        "peer_p50_over_mesh_p50": paired_ratio(all_rows, "peer_aiohttp", "mesh_edge", "p50_ms"),
    }
    targets = {
        "edge_p50_within_1_2x_echo": _le(ratios["edge_p50_over_echo_p50"], 1.2),
        "throughput_at_least_80pct_echo": _ge(ratios["throughput_over_echo"], 0.8),
        "link_mesh_p50_at_most_tenth_of_cloud_only": _ge(
            ratios["cloud_only_p50_over_mesh_p50"], 10.0
        ),
        "edge_rss_at_most_150_mb": _le(edge_rss, 150.0),
    }
    return {
        "version": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "trials": config.trials,
            "latency_n": config.latency_n,
            "throughput_n": config.throughput_n,
            "link_latency_n": config.link_latency_n,
            "link_throughput_n": config.link_throughput_n,
            "concurrency": config.concurrency,
            "link_added_rtt_ms": 2 * config.link_ms_one_way,
            "payload": "one digits row, float32 (1, 64)",
            "calibrated_edge_threshold": calibrated,
        },
        "rows": {key: summarize(row) for key, row in all_rows.items()},
        "memory": memory,
        "edge_rss_mb": edge_rss,
        "ratios": ratios,
        "targets": targets,
    }


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _ge(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


# ---------------------------------------------------------------------------------- reporting


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: Any, digits: int = 3) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    cfg = report["config"]
    table = Table(
        title=(
            f"mesh bench: medians of {cfg['trials']} interleaved trials; "
            f"c=1 latency, c={cfg['concurrency']} throughput"
        )
    )
    for name, justify in [
        ("row", "left"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("req/s", "right"),
        ("CPU ms/1k req", "right"),
        ("answered by", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report["rows"].values():
        if not row["available"]:
            table.add_row(row["label"], "-", "-", "-", "-", row["note"])
            continue
        answered = ", ".join(f"{k} {v}" for k, v in sorted(row["answered_by"].items()))
        if row["errors"]:
            answered += f"; errors {row['errors']}"
        table.add_row(
            row["label"],
            fmt(row["p50_ms"]),
            fmt(row["p99_ms"]),
            fmt(row["throughput_rps"]),
            fmt(row["cpu_ms_per_1k"], 1),
            answered,
        )
    console = Console()
    console.print(table)
    mem = ", ".join(f"{k} {fmt(v['rss_mb'], 1)} MB" for k, v in report["memory"].items())
    console.print(f"node RSS: {mem}")
    for key, value in report["ratios"].items():
        console.print(f"{key}: {fmt(value)}")
    for key, met in report["targets"].items():
        mark = "n/a" if met is None else ("met" if met else "NOT met")
        console.print(f"target {key}: {mark}")


async def bench_main(
    quick: bool, cache: Path, mlserver: str | None, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Run the bench; SIGTERM cancels it like Ctrl-C, so every process started is stopped."""
    config = BenchConfig.quick() if quick else BenchConfig.full()
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_bench(config, cache, mlserver, progress)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _role_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Helper servers of mesh bench.")
    sub = parser.add_subparsers(dest="role", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--url", required=True)
    echo.add_argument("--subject", default=ECHO_SUBJECT)
    peer = sub.add_parser("peer")
    peer.add_argument("--model", type=Path, required=True)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--target", required=True)
    proxy.add_argument("--latency-ms", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "echo":
        asyncio.run(serve_echo(args.url, args.subject))
    elif args.role == "peer":
        asyncio.run(serve_peer(args.model))
    else:
        asyncio.run(serve_proxy(args.target, args.latency_ms))


if __name__ == "__main__":
    _role_main(sys.argv[1:])
