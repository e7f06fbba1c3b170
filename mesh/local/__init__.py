"""The mesh on one machine (``mesh up``): real ``nats-server`` processes (a hub and a site leaf
server), node and ingress processes, and the supervisor that restarts what exits. Used by ``mesh
up``, the development rigs, the demo and the bench; a deployment runs the same processes under
compose or Kubernetes instead."""
