"""Identities, permissions and TLS for the mesh's NATS servers and clients (issue 11).

Pure functions and file writing only: nothing here connects to NATS or starts a server.
"""
