"""A tier node: the data plane (the request path, no transport), its served models (ONNX Runtime,
scores fused into the graph), the escalation's pure parts (policy, breaker, latency record,
budgeted upstream), micro-batching, evidence, and ``tier.TierNode``, which composes them with the
transports.

Empty on purpose: importing a pure module here (``mesh.node.policy``) must load nothing else.
"""
