"""``mesh review serve``: the review queue's service at the hub, the intake and the desk.

The desk connects first and reads the queue, the labels and the traffic; the intake's windows
are seeded with what the queue took in the last day (a restart does not reopen a day's limit);
then the intake takes candidates. It prints ``MESH_REVIEW_READY http=URL`` once both run.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

from mesh.observability.metrics import default_metrics
from mesh.observability.telemetry import configure_telemetry
from mesh.review.desk import ReviewDesk
from mesh.review.intake import ReviewIntake
from mesh.review.sampling import DAY_S, QueueLimits
from mesh.review.settings import ReviewServiceSettings
from mesh.services.process import entry_point
from mesh.services.stopping import Shutdown
from mesh.topology.processes import REVIEW_READY
from mesh.transport.connection import connected
from mesh.transport.http import HttpServer, Readiness, create_app

READY_PREFIX = REVIEW_READY
SERVICE = "mesh-review"


def queue_limits(settings: ReviewServiceSettings) -> QueueLimits:
    return QueueLimits(
        settings.limits.windows(),
        reasons={reason: limits.windows() for reason, limits in settings.reasons.items()},
        models={model: limits.windows() for model, limits in settings.models.items()},
    )


async def serve(settings: ReviewServiceSettings, shutdown: Shutdown) -> int:
    """Take candidates and answer the review API until ``shutdown``."""
    metrics = default_metrics()
    readiness = Readiness()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(configure_telemetry(SERVICE, "review"))
        http: HttpServer | None = None
        if settings.http_port is not None:
            http = HttpServer(
                create_app(SERVICE, readiness), settings.http_host, settings.http_port
            )
            await stack.enter_async_context(http)
        desk_nc = await stack.enter_async_context(connected(settings.nats, "mesh-review-desk"))
        intake_nc = await stack.enter_async_context(
            connected(settings.intake_nats(), "mesh-review-intake")
        )
        desk = ReviewDesk(
            desk_nc, cost=settings.cost.model(), metrics=metrics, domain=settings.domain
        )
        await stack.enter_async_context(desk)
        limits = queue_limits(settings)
        limits.seed(desk.ledger.queued_since(time.time() - DAY_S))
        intake = ReviewIntake(
            intake_nc,
            limits=limits,
            metrics=metrics,
            domain=settings.domain,
            batch=settings.fetch_batch,
        )
        await stack.enter_async_context(intake)
        readiness.add("nats", lambda: None if desk_nc.is_connected else "not connected to NATS")
        print(f"{READY_PREFIX} http={http.url if http else '-'}", flush=True)
        await shutdown.wait()
    return 0


main = entry_point(
    ReviewServiceSettings,
    "review service",
    serve,
    SERVICE,
    source="flags and MESH_REVIEW_SERVICE_* variables",
)
