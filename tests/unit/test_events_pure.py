"""Event records and action rules, without a server."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from mesh.errors import InvalidArgumentError
from mesh.events.actions import ResultView, matches, matching
from mesh.events.records import (
    InferenceEvent,
    ResultEvent,
    decode_event,
    decode_result,
    encode_event,
    encode_result,
)
from mesh.settings import ActionRule, EventSettings


def event(**change: object) -> InferenceEvent:
    base = InferenceEvent(
        id="e-1",
        model="digits",
        source="cam",
        inputs={"input": np.ones((1, 4), dtype=np.float32)},
        budget_ms=500.0,
        residency="site",
        published_at=1_700_000_000.0,
    )
    for key, value in change.items():
        setattr(base, key, value)
    return base


def test_events_and_results_round_trip() -> None:
    got = decode_event(encode_event(event()))
    assert (got.id, got.model, got.source, got.budget_ms, got.residency) == (
        "e-1", "digits", "cam", 500.0, "site",
    )  # fmt: skip
    assert np.array_equal(got.inputs["input"], np.ones((1, 4), dtype=np.float32))
    request = got.request()
    assert request.id == "e-1" and request.budget_ms == 500.0
    result = ResultEvent("e-1", "digits", "cam", 1.0, 2.0, 7, b"reply")
    assert decode_result(encode_result(result)) == result


@pytest.mark.parametrize(
    "change",
    [{"kind": "infer_request"}, {"id": ""}, {"id": "a b"}, {"budget_ms": 0}, {"inputs": {}},
     {"published_at": "now"}],
)  # fmt: skip
def test_malformed_events_are_refused(change: dict[str, object]) -> None:
    raw = msgpack.unpackb(encode_event(event()))
    with pytest.raises(InvalidArgumentError):
        decode_event(msgpack.packb({**raw, **change}))
    with pytest.raises(InvalidArgumentError):
        decode_event(b"\xc1")


def rule(**fields: object) -> ActionRule:
    return ActionRule.model_validate({"name": "r", "publish": "mesh.actions.r", **fields})


def view(labels: list[int], confidence: float | None = 0.9, **kw: object) -> ResultView:
    return ResultView(
        model=str(kw.get("model", "digits")),
        labels=labels,
        confidence=confidence,
        tier=str(kw.get("tier", "edge")),
        degraded=bool(kw.get("degraded", False)),
        error=kw.get("error"),  # type: ignore[arg-type]
    )


def test_every_condition_a_rule_sets_must_hold() -> None:
    alert = rule(labels=[3, 8], min_confidence=0.9)
    assert matches(alert, view([3]))
    assert matches(alert, view([1, 8]))  # any row's label
    assert not matches(alert, view([3], 0.5))
    assert not matches(alert, view([4]))
    degraded = rule(degraded=True, tiers=["edge"])
    assert matches(degraded, view([1], degraded=True))
    assert not matches(degraded, view([1], degraded=True, tier="cloud"))
    assert not matches(rule(model="other"), view([1]))
    errors = rule(errors=True)
    assert matches(errors, view([], None, error="INVALID_ARGUMENT: bad"))
    assert not matches(errors, view([1]))
    assert not matches(rule(labels=[1]), view([], None, error="x"))
    assert [r.name for r in matching([alert, errors], view([8]))] == ["r"]


@pytest.mark.parametrize(
    "fields",
    [
        {"colour": "red"},  # a field no rule knows
        {"publish": "alerts.line4"},  # outside mesh.actions.
        {"publish": None},  # no target
        {"webhook": {"url": "ftp://x"}},
        {"webhook": {"url": "http://x"}, "publish": "mesh.actions.x"},  # two targets
        {"name": "a.b"},
    ],
)
def test_a_rule_that_does_not_make_sense_is_a_settings_error_at_start(
    fields: dict[str, object],
) -> None:
    data = {"name": "r", "publish": "mesh.actions.r", **fields}
    with pytest.raises(ValidationError):
        EventSettings.model_validate({"enabled": True, "actions": [data]})
