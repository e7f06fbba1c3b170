"""Runnable processes of the mesh."""
