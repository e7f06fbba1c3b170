"""``mesh demo``: the whole mesh on this machine, a WAN outage in the middle, and a report.

It starts an embedded NATS hub and a site leaf server with a fault proxy on the link between
them, a cloud tier on the hub, a gateway and two edge nodes on the site, then sends the digits
held-out split through the SDK as an application would, many requests in flight. Partway it cuts
the site's link to the hub and later restores it. A live view shows what each tier answers, the
gateway's circuit breaker, degraded answers and the hard-example backlog; the run ends with a
report (terminal and JSON) and exits non-zero if a request was lost or answered with an error.

Every node exports its spans by OTLP/HTTP to a small receiver inside the demo, and the demo
traces its own requests, so the report can draw one escalated request's trace across all tiers.
Tracing every request costs the nodes about a fifth of their latency: the figures here include it.

The parts: ``state`` (what the run observes), ``journal`` (its timeline), ``testbed`` (the mesh
under test), ``load`` (the load generator), ``publisher`` (events, their results, alerts),
``observer`` (the gateway's breaker and backlog), ``fleetwatch`` (what the fleet's nodes did),
``receiver`` (spans and the trace tree), ``view`` (the live display), ``report`` (the typed
report and its JSON), ``panel`` (its drawing). ``scenarios`` holds what happens when (the
rollouts, the link cut and heal, the drain); ``run`` puts them together.
"""

from mesh.dev.demo.run import demo_main

__all__ = ["demo_main"]
