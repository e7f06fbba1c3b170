"""Edge mesh library."""
