"""Every name the mesh puts on the wire: subjects, queue groups, streams and buckets with their
configurations, KV keys, headers, service names and ready lines. Pure: no transport.

The permission table (``mesh.security.permissions``) is generated from these names, so a rename
can neither open nor close a door.
"""
