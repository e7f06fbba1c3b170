"""The Open Inference Protocol (KServe v2) ingress: REST and gRPC into the mesh.

``oip`` is the protocol as data (pure), ``core`` the ingress over the SDK, ``rest`` and
``grpc_server`` the transports, ``service`` the ``mesh ingress`` process.
"""
