"""The node's transports, thin adapters that decide nothing: NATS in (``endpoint``) and out
(``upstream``), the guarded connection (``guard``), discovery, JetStream helpers, hard-example
store-and-forward, and the HTTP side (health, readiness, metrics)."""
