"""Every service's HTTP side: one aiohttp app that more routes can join.

``/healthz`` says the process is alive; ``/readyz`` says it can serve (NATS connected, models
loaded and warm), as Kubernetes probes expect: 200 when true, 503 with the reasons when not.
``/metrics`` renders the Prometheus registry that ``mesh.observability.telemetry`` feeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from mesh.lifecycle import Service
from mesh.observability.telemetry import metrics_handler

ReadinessCheck = Callable[[], str | None]
"""Returns None when ready, else what is not."""


@dataclass
class Readiness:
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, check in self.checks.items():
            problem = check()
            if problem is not None:
                found[name] = problem
        return found


READINESS = web.AppKey("readiness", Readiness)
SERVICE = web.AppKey("service", str)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "service": request.app[SERVICE]})


async def _readyz(request: web.Request) -> web.Response:
    problems = request.app[READINESS].problems()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


def create_app(service: str, readiness: Readiness) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app[READINESS] = readiness
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


class HttpServer(Service):
    """Runs an app on ``host:port`` (port 0 picks one); an async context manager."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
