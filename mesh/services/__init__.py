"""The mesh's processes (``mesh node``, ``mesh ingress``, ``mesh controller``), started one way
(``process``) and stopped one way (``stopping``)."""
