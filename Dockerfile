# One image for every mesh service: `mesh node`, `mesh up`, `mesh demo`, `mesh bench`.
# Configuration comes only from MESH_* variables and a mounted settings file; logs go to stdout.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mesh ./mesh
RUN pip install --no-cache-dir --prefix=/install '.[models]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
# The demo models, built reproducibly at image build time (seeded, nothing downloaded).
RUN mesh models build-demo --out /models && useradd --uid 10001 --no-create-home mesh
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["mesh"]
CMD ["node", "--config", "/etc/mesh/node.yaml"]
