"""Metrics (plain counters rendered when scraped), OpenTelemetry tracing and JSON logs."""
