"""Which trace exporter the standard OTEL_* variables select; none unless asked."""

from __future__ import annotations

import pytest

from mesh.observability.telemetry import traces_exporter_configured

VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_nothing_is_exported_when_no_variable_is_set() -> None:
    assert traces_exporter_configured() is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces"),
        ("OTEL_TRACES_EXPORTER", "otlp"),
    ],
)
def test_an_otlp_endpoint_or_exporter_selects_otlp(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert traces_exporter_configured() == "otlp"


def test_console_can_be_chosen_and_none_wins_over_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert traces_exporter_configured() == "console"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert traces_exporter_configured() is None
