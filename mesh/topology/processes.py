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
