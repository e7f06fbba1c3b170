"""Event streams: applications publish inference events without waiting; the entry tier consumes
them through the same data plane as requests and stores one result event per inference event.

``records`` holds the contracts (pure), ``streams`` the JetStream layout, ``consumer`` the entry
tier's side; ``MeshClient.publish`` and ``MeshClient.results`` the application's.
"""
