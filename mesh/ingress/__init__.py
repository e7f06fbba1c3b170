"""The Open Inference Protocol (KServe v2) ingress: REST and gRPC into the mesh.

``oip`` is the protocol as data and ``oip_rest`` the REST body read and written in bounded steps
(pure); ``callers`` says who calls, ``shares`` and ``gate`` how much each may hold at once;
``core`` is the ingress over the SDK, ``rest`` and ``grpc_server`` the transports, and
``mesh.services.ingress`` the ``mesh ingress`` process.
"""
