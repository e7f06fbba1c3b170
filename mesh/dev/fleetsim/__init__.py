"""A simulated fleet on real servers: many light tier nodes per process (``mesh fleet
simulate``)."""
