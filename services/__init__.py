"""Thin entry points for a source checkout: the processes live in ``mesh`` (see README.md)."""
