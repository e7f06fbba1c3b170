"""The ingress's REST transport (aiohttp): the v2 paths over ``Ingress``.

Errors are ``{"error": "..."}`` with 400 (a malformed or mismatched request), 404 (an unknown
model or version), 408 (a body that did not arrive in time), 413 (a body or tensor over the
limit), 429 (the caller's share or the ingress is full), 401 (a missing or wrong bearer token),
and the mesh's own codes for what went wrong past the ingress (503, 504). Health paths take no
token, so that Kubernetes probes work as they are.

Nothing is read before it is let in: the token is checked on the headers; an infer call then
takes its place at the gate (``mesh.ingress.gate``: a request slot, then bytes for its body,
waiting for them a bounded time) before one byte of its body is read, and the body must arrive
within ``body_timeout_s``. The JSON is parsed and the answer written in steps
(``mesh.ingress.oip_rest``), so that one caller's large body never stalls another's call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from mesh.errors import HTTP_STATUS, ErrorCode, InvalidArgumentError, MeshError
from mesh.ingress import oip, oip_rest
from mesh.ingress.callers import Callers
from mesh.ingress.core import Ingress
from mesh.ingress.gate import BodyTimeoutError, BusyError, Gate, GateLimits, Ticket
from mesh.ingress.steps import drive
from mesh.observability.telemetry import metrics_handler
from mesh.transport.http import HttpServer

INGRESS = web.AppKey("ingress", Ingress)
CALLERS = web.AppKey("callers", Callers)
GATE = web.AppKey("gate", Gate)
CALLER = web.RequestKey("caller", str)
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
BUDGET_HEADER = "Mesh-Budget-Ms"
RESIDENCY_HEADER = "Mesh-Residency"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _status(exc: MeshError) -> int:
    if isinstance(exc, BusyError):
        return 429
    if isinstance(exc, BodyTimeoutError):
        return 408
    if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
        return 413  # a request too large for the ingress or the mesh (rows, bytes, elements)
    return HTTP_STATUS.get(exc.code, 500)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    address = request.remote or ""
    caller = request.app[CALLERS].identify(request.headers.get("Authorization", ""), address)
    if caller is None and request.path not in OPEN_PATHS:
        return error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
    request[CALLER] = caller or address
    try:
        return await handler(request)
    except MeshError as exc:
        return error(_status(exc), exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, f"the body is over the ingress's limit: {exc.text}")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason)
        raise


async def _server_metadata(request: web.Request) -> web.Response:
    return web.json_response(request.app[INGRESS].server_metadata())


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"live": request.app[INGRESS].live()})


async def _ready(request: web.Request) -> web.Response:
    ingress = request.app[INGRESS]
    problems = ingress.problems()
    if problems:
        return web.json_response({"ready": False, "problems": problems}, status=503)
    return web.json_response({"ready": True})


async def _model_metadata(request: web.Request) -> web.Response:
    model, version = request.match_info["model"], request.match_info.get("version")
    return web.json_response(request.app[INGRESS].model_metadata(model, version))


async def _model_ready(request: web.Request) -> web.Response:
    ingress = request.app[INGRESS]
    model, version = request.match_info["model"], request.match_info.get("version")
    ingress.require_model(model, version)
    ready = ingress.model_ready(model, version)
    return web.json_response({"name": model, "ready": ready}, status=200 if ready else 503)


def _number(request: web.Request, header: str, kind: type[int] | type[float]) -> float | None:
    value = request.headers.get(header)
    try:
        return None if value is None else kind(value)
    except ValueError:
        raise InvalidArgumentError(f"{header} {str(value)[:20]!r} is not a number") from None


async def _infer(request: web.Request) -> web.Response:
    ingress, gate = request.app[INGRESS], request.app[GATE]
    model, version = request.match_info["model"], request.match_info.get("version")
    ingress.require_model(model, version)  # an unknown model is 404 whatever the body says
    length = _number(request, oip.BINARY_HEADER, int)
    budget_ms = _number(request, BUDGET_HEADER, float)
    with gate.enter(request[CALLER]) as ticket:
        body = await _read_body(request, ticket)
        parsed = await drive(
            oip_rest.parse_rest_steps(body, None if length is None else int(length), model, version)
        )
        answer = await ingress.infer(
            parsed,
            # the propagator runs only for a caller in a trace (it costs a request's tenth)
            traceparent=request.headers if "traceparent" in request.headers else None,
            budget_ms=budget_ms,
            residency=request.headers.get(RESIDENCY_HEADER),
            span_name=f"POST /v2/models/{model}/infer",
        )
        payload, json_length = await drive(oip_rest.render_rest_steps(answer))
    if json_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload,
        headers={
            oip.BINARY_HEADER: str(json_length),
            "Content-Type": "application/octet-stream",
        },
    )


async def _read_body(request: web.Request, ticket: Ticket) -> bytearray:
    """The body, once the gate has room for it: its declared length is taken before a byte is
    read (the largest body when it declares none, or is compressed), what it took kept after."""
    limits = ticket.gate.limits
    declared = None if request.headers.get("Content-Encoding") else request.content_length
    if declared is not None and declared > limits.max_body:
        raise oip.TooLargeError(
            f"the body's {declared} bytes are over the ingress's limit of {limits.max_body}"
        )
    await ticket.reserve(limits.max_body if declared is None else declared)
    # aiohttp 3.14 has no timeout for a request's body (its keepalive_timeout covers the
    # headers only, see RestServer): a body must arrive within its own deadline here.
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            body = await _receive(request, declared or 0, limits.max_body)
    except TimeoutError:
        raise BodyTimeoutError(
            f"the body did not arrive within {limits.body_timeout_s:g} s"
        ) from None
    ticket.keep(len(body))
    return body


async def _receive(request: web.Request, declared: int, largest: int) -> bytearray:
    body = bytearray(declared)
    end = 0
    try:
        while chunk := await request.content.readany():
            start, end = end, end + len(chunk)
            if end > largest:
                raise oip.TooLargeError(f"the body is over the ingress's limit of {largest} bytes")
            body[start:end] = chunk
    except (RequestPayloadError, ConnectionError) as exc:
        raise InvalidArgumentError(f"the body could not be read: {exc}") from None
    del body[end:]
    return body


def create_rest_app(
    ingress: Ingress,
    *,
    token: str = "",
    max_body: int = 64 << 20,
    callers: Callers | None = None,
    gate: Gate | None = None,
) -> web.Application:
    """The REST app; ``callers`` and ``gate`` are shared with the gRPC transport (default: the
    ``token`` alone, and a gate of default limits with ``max_body`` as its largest body)."""
    gate = gate or Gate(GateLimits(max_body=max_body))
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=gate.limits.max_body)
    app[INGRESS] = ingress
    app[CALLERS] = callers or Callers(token)
    app[GATE] = gate
    r = app.router
    r.add_get("/v2", _server_metadata)
    r.add_get("/v2/health/live", _live)
    r.add_get("/v2/health/ready", _ready)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, _model_metadata)
        r.add_get(base + "/ready", _model_ready)
        r.add_post(base + "/infer", _infer)
    r.add_get("/metrics", metrics_handler)
    return app


class RestServer(HttpServer):
    """The REST app on ``host:port``, cutting off a connection whose request headers have not
    all arrived ``header_timeout_s`` after it opened or after its previous answer."""

    def __init__(
        self, app: web.Application, host: str, port: int, *, header_timeout_s: float = 15.0
    ) -> None:
        super().__init__(app, host, port)
        self.header_timeout_s = header_timeout_s

    async def _start(self) -> None:
        # aiohttp 3.14 arms keepalive_timeout when a connection opens and after each answer,
        # and bytes of headers do not push it back, so it is the header timeout aiohttp has
        # (and the idle time a kept-alive connection is given).
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.header_timeout_s
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
