"""What the mesh's processes print for whoever starts them: ready lines and the environment
lines of ``mesh up`` (other tools wait for these; keep them byte for byte)."""

from __future__ import annotations

#: a node prints ``MESH_NODE_READY node=NAME tier=TIER http=URL`` once it serves.
NODE_READY = "MESH_NODE_READY"
#: the ingress prints ``MESH_INGRESS_READY http=URL grpc=HOST:PORT``.
INGRESS_READY = "MESH_INGRESS_READY"
#: a controller prints ``MESH_CONTROLLER ready name=NAME``.
CONTROLLER_READY = "MESH_CONTROLLER ready"

#: what ``mesh up`` prints on stdout, one ``NAME=VALUE`` a line.
ENV_NATS_URL = "MESH_NATS_URL"
ENV_CREDS = "MESH_CREDS"
ENV_HTTP_URL = "MESH_HTTP_URL"
ENV_GRPC_URL = "MESH_GRPC_URL"
ENV_INGRESS_TOKEN = "MESH_INGRESS_TOKEN"
#: and, for the operator's commands (``mesh rollout``, ``mesh fleet``, ``mesh models push``...,
#: which read them as their defaults): the hub, the controller's credentials, the key that
#: signs versions and the public key the nodes trust.
ENV_HUB_URL = "MESH_HUB_URL"
ENV_CONTROLLER_CREDS = "MESH_CONTROLLER_CREDS"
ENV_SIGNING_KEY = "MESH_SIGNING_KEY"
ENV_TRUSTED_KEYS = "MESH_TRUSTED_KEYS"
