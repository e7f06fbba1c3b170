"""The application SDK (``from mesh import MeshClient``)."""
