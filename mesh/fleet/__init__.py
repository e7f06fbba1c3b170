"""The fleet: signed model artifacts in a registry on JetStream, the desired state of every group
of nodes, node heartbeats, and the agent inside a node that takes new versions.

Pure parts (signatures, selectors, records, the agent's decisions) import no transport; the NATS
side is ``mesh.fleet.registry`` and ``mesh.fleet.agent``.
"""
