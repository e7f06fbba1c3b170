"""JSON log lines carry the trace and span ids of the span they are written in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from mesh.observability.telemetry import JsonFormatter, configure_logging


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """What ``configure_logging`` writes, redirected from stdout to a buffer."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("INFO", service="mesh-test")
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_log_line_inside_a_span_carries_its_trace_and_span_ids(
    json_logging: io.StringIO,
) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("mesh.test").warning("inside %s", "a span")
    ctx = span.get_span_context()
    [entry] = lines(json_logging.getvalue())
    assert entry["message"] == "inside a span"
    assert entry["level"] == "WARNING"
    assert entry["service"] == "mesh-test"
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")


def test_a_log_line_outside_a_span_has_no_trace_ids_and_keeps_extra_fields(
    json_logging: io.StringIO,
) -> None:
    logging.getLogger("mesh.test").warning(
        "drift", extra={"fields": {"kind": "drift", "psi": 0.4, "message": "ignored"}}
    )
    [entry] = lines(json_logging.getvalue())
    assert "trace_id" not in entry and "span_id" not in entry
    assert entry["kind"] == "drift" and entry["psi"] == 0.4
    assert entry["message"] == "drift"


def test_a_huge_message_or_field_is_clipped_to_one_reasonable_line() -> None:
    from mesh.observability.telemetry import MAX_LOG_TEXT

    formatter = JsonFormatter("svc")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "id %s", ("a" * 1_000_000,), None)
    record.fields = {"request_id": "b" * 1_000_000, "rows": 3}
    line = formatter.format(record)
    entry = json.loads(line)
    assert len(line) < 3 * MAX_LOG_TEXT + 1000
    assert entry["message"].endswith("more characters]")
    assert entry["request_id"].startswith("b" * 100)
    assert entry["rows"] == 3
