# One image for every mesh process: `mesh node`, `mesh ingress`, `mesh controller`, `mesh fleet`.
# Settings come from a mounted YAML file and MESH_* variables, credentials from mounted secrets,
# models from a mounted repository or the fleet's registry (none are baked in); logs go to stdout.
#
#   docker build -t REGISTRY/edge-mesh:0.1.0 .                     # the runtime image (last stage)
#   docker build --target tools -t REGISTRY/edge-mesh-tools:0.1.0 .  # + model building, dev PKI
#
# Wheels are built in `build`, with the compiler; the runtime stages only install them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG TRUSTME_VERSION=1.2.1

FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mesh ./mesh
# Every wheel the runtime and the tools need, built once; nothing is compiled later.
ARG TRUSTME_VERSION
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[models]' "trustme==${TRUSTME_VERSION}"

# The operator's tools: the runtime plus scikit-learn (mesh models build-demo, mesh models
# import) and trustme (development certificates from mesh identities init).
FROM ${PYTHON_IMAGE} AS tools
ARG VERSION
ARG TRUSTME_VERSION
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "edge-mesh[models]==${VERSION}" "trustme==${TRUSTME_VERSION}" \
    && groupadd --gid 10001 mesh \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent mesh \
    && install -d -o 10001 -g 10001 /models /var/lib/mesh
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
ENTRYPOINT ["mesh"]
CMD ["--help"]

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION
LABEL org.opencontainers.image.title="edge-mesh" \
      org.opencontainers.image.description="Edge-cloud inference mesh over NATS: one image for every tier, the ingress and the controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/edge-mesh/edge-mesh"
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "edge-mesh==${VERSION}" \
    && groupadd --gid 10001 mesh \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent mesh \
    && install -d -o 10001 -g 10001 /models /var/lib/mesh
# Owned by the image's user so that a new named volume mounted there is writable by it
# (the models a setup step builds, the fleet agent's verified versions).
VOLUME ["/var/lib/mesh"]
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
# 8080: a node's /healthz, /readyz and /metrics; 8000/8001: the ingress's REST and gRPC.
EXPOSE 8080 8000 8001
# A node's readiness (a service with another port sets its own healthcheck, as compose does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["mesh"]
CMD ["node", "--config", "/etc/mesh/node.yaml"]
