"""What the mesh's processes print for whoever starts them: ready lines and the environment
lines of ``mesh up`` (other tools wait for these; keep them byte for byte)."""

from __future__ import annotations

#: a node prints ``MESH_NODE_READY node=NAME tier=TIER http=URL`` once it serves.
NODE_READY = "MESH_NODE_READY"
#: the ingress prints ``MESH_INGRESS_READY http=URL grpc=HOST:PORT``.
INGRESS_READY = "MESH_INGRESS_READY"
#: a controller prints ``MESH_CONTROLLER ready name=NAME``.
CONTROLLER_READY = "MESH_CONTROLLER ready"
#: the console prints ``MESH_CONSOLE_READY http=URL``.
CONSOLE_READY = "MESH_CONSOLE_READY"
#: the review service prints ``MESH_REVIEW_READY http=URL``.
REVIEW_READY = "MESH_REVIEW_READY"

#: what ``mesh up`` prints on stdout, one ``NAME=VALUE`` a line.
ENV_NATS_URL = "MESH_NATS_URL"
ENV_CREDS = "MESH_CREDS"
ENV_HTTP_URL = "MESH_HTTP_URL"
ENV_GRPC_URL = "MESH_GRPC_URL"
ENV_INGRESS_TOKEN = "MESH_INGRESS_TOKEN"
ENV_TRUSTED_KEYS = "MESH_TRUSTED_KEYS"
#: the operator console's address and the token people open it with (``mesh up``).
ENV_CONSOLE_URL = "MESH_CONSOLE_URL"
ENV_CONSOLE_TOKEN = "MESH_CONSOLE_TOKEN"
#: credentials of an identity with the reviewer role (``mesh review``).
ENV_REVIEWER_CREDS = "MESH_REVIEWER_CREDS"
#: and, for the operator's commands (``mesh rollout``, ``mesh fleet``, ``mesh models push``...,
#: which read them as their defaults): the hub, the controller's credentials, the key that
#: signs versions and the public key the nodes trust.
ENV_HUB_URL = "MESH_HUB_URL"
ENV_CONTROLLER_CREDS = "MESH_CONTROLLER_CREDS"
ENV_SIGNING_KEY = "MESH_SIGNING_KEY"

#: what the ``mesh`` commands read from the environment beside the processes' settings: the
#: settings classes do not take these for misspelt settings.
ENV_INGRESS_CREDS = "MESH_INGRESS_CREDS"
ENV_TLS_CA = "MESH_TLS_CA"
ENV_CACHE_DIR = "MESH_CACHE_DIR"
ENV_BENCH_MLSERVER = "MESH_BENCH_MLSERVER"
COMMAND_VARIABLES = (
    ENV_NATS_URL,
    ENV_CREDS,
    ENV_HTTP_URL,
    ENV_GRPC_URL,
    ENV_INGRESS_TOKEN,
    ENV_TRUSTED_KEYS,
    ENV_CONSOLE_URL,
    ENV_CONSOLE_TOKEN,
    ENV_REVIEWER_CREDS,
    ENV_HUB_URL,
    ENV_CONTROLLER_CREDS,
    ENV_SIGNING_KEY,
    ENV_INGRESS_CREDS,
    ENV_TLS_CA,
    ENV_CACHE_DIR,
    ENV_BENCH_MLSERVER,
)
