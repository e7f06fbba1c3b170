"""The bench's helper servers, each in a process of its own: ``python -m mesh.dev.bench
<role>`` (echo, peer, proxy), and how MLServer is found and configured."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mesh.dev.bench.config import ECHO_SUBJECT, ORT_SUBJECT, READY
from mesh.transport.guard import flush_in_order


async def _wait_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_echo(url: str, subject: str, creds: str) -> None:
    """A bare nats-py responder: every request gets its own payload back."""
    import nats
    from nats.aio.msg import Msg

    nc = await nats.connect(url, name="bench-echo", user_credentials=creds)

    async def echo(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(subject, cb=echo)
    await flush_in_order(nc)
    print(f"{READY} subject={subject}", flush=True)
    await _wait_stop_signal()
    await nc.drain()


async def serve_ort(url: str, subject: str, creds: str, model_path: Path) -> None:
    """The least a model behind NATS can do: a bare nats-py responder that takes one raw float32
    row, makes one ONNX Runtime call and replies with the probabilities' bytes. No envelope, no
    checks, no scores: the floor under any NATS model server, beside the aiohttp peer's."""
    import nats
    from nats.aio.msg import Msg

    from mesh.node.runtime import OnnxModel

    model = OnnxModel.load(model_path)
    name = model.inputs[0].name

    nc = await nats.connect(url, name="bench-ort", user_credentials=creds)

    async def answer(msg: Msg) -> None:
        x = np.frombuffer(msg.data, dtype=np.float32).reshape(1, -1)
        outputs = model.run({name: x})
        await nc.publish(msg.reply, outputs["probabilities"].tobytes())

    await nc.subscribe(subject, cb=answer)
    await flush_in_order(nc)
    print(f"{READY} subject={subject}", flush=True)
    await _wait_stop_signal()
    await nc.drain()


async def serve_peer(model_path: Path) -> None:
    """A hand-rolled HTTP model server: aiohttp + ONNX Runtime inline, JSON in and out."""
    from aiohttp import web

    from mesh.node.runtime import OnnxModel

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
    from mesh.dev.faults import FaultProxy

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


def role_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Helper servers of mesh bench.")
    sub = parser.add_subparsers(dest="role", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--url", required=True)
    echo.add_argument("--subject", default=ECHO_SUBJECT)
    echo.add_argument("--creds", required=True)
    ort = sub.add_parser("ort")
    ort.add_argument("--url", required=True)
    ort.add_argument("--subject", default=ORT_SUBJECT)
    ort.add_argument("--creds", required=True)
    ort.add_argument("--model", type=Path, required=True)
    peer = sub.add_parser("peer")
    peer.add_argument("--model", type=Path, required=True)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--target", required=True)
    proxy.add_argument("--latency-ms", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "echo":
        asyncio.run(serve_echo(args.url, args.subject, args.creds))
    elif args.role == "ort":
        asyncio.run(serve_ort(args.url, args.subject, args.creds, args.model))
    elif args.role == "peer":
        asyncio.run(serve_peer(args.model))
    else:
        asyncio.run(serve_proxy(args.target, args.latency_ms))
