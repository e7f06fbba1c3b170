"""``mesh soak``: the mesh at scale for a long time, under chaos."""
