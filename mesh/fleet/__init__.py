"""The fleet: signed model artifacts in a registry on JetStream, the desired state of every group
of nodes, node heartbeats, the agent inside a node that takes new versions, and the controller
that drives staged rollouts.

Pure parts import no transport: ``signing``, ``desired`` (selectors and assignments),
``refusals`` (what a node waits for, what it refuses, the request that clears a refusal),
``liveness`` (whether a node is online) and the ``rollout`` package (plan, record, statistics,
evidence, judge, state machine). The NATS side: ``registry`` and ``release`` (signing a
version, making the next one); in a node ``agent`` with its ``cache``, ``device_gate`` and
``heartbeat``; in the cloud ``controller`` with its ``lease`` (``rollouts_kv`` is where rollouts
are kept) and ``admin`` (what ``mesh rollout`` and ``mesh fleet retry`` do).
"""
