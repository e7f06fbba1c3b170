"""The mesh's processes: ``mesh node``, ``mesh demo``, ``mesh bench``."""
