"""The ingress's REST transport (aiohttp): the v2 paths over ``Ingress``.

Errors are ``{"error": "..."}`` with 400 (a malformed or mismatched request), 404 (an unknown
model or version), 413 (a body over the limit), 401 (a missing or wrong bearer token), and the
mesh's own codes for what went wrong past the ingress (503, 504). Health paths take no token, so
that Kubernetes probes work as they are.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from mesh.errors import HTTP_STATUS, ErrorCode, MeshError
from mesh.ingress import oip
from mesh.ingress.core import Ingress
from mesh.observability.telemetry import metrics_handler

INGRESS = web.AppKey("ingress", Ingress)
TOKEN = web.AppKey("token", str)
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
BUDGET_HEADER = "Mesh-Budget-Ms"
RESIDENCY_HEADER = "Mesh-Residency"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _status(exc: MeshError) -> int:
    if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
        return 413
    return HTTP_STATUS.get(exc.code, 500)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
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


async def _infer(request: web.Request) -> web.Response:
    ingress = request.app[INGRESS]
    model, version = request.match_info["model"], request.match_info.get("version")
    ingress.require_model(model, version)  # an unknown model is 404 whatever the body says
    header = request.headers.get(oip.BINARY_HEADER)
    try:
        length = None if header is None else int(header)
    except ValueError:
        return error(400, f"{oip.BINARY_HEADER} {str(header)[:20]!r} is not a number")
    body = await request.read()
    parsed = oip.parse_rest(body, length, model, version)
    budget = request.headers.get(BUDGET_HEADER)
    try:
        budget_ms = None if budget is None else float(budget)
    except ValueError:
        return error(400, f"{BUDGET_HEADER} {str(budget)[:20]!r} is not a number")
    answer = await ingress.infer(
        parsed,
        traceparent=request.headers,
        budget_ms=budget_ms,
        residency=request.headers.get(RESIDENCY_HEADER),
        span_name=f"POST /v2/models/{model}/infer",
    )
    payload, json_length = oip.render_rest(answer)
    if json_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload,
        headers={
            oip.BINARY_HEADER: str(json_length),
            "Content-Type": "application/octet-stream",
        },
    )


def create_rest_app(
    ingress: Ingress, *, token: str = "", max_body: int = 64 << 20
) -> web.Application:
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=max_body)
    app[INGRESS] = ingress
    app[TOKEN] = token
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
