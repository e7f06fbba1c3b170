"""The JSON Schemas in schemas/ describe the messages the codecs really write."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from mesh.errors import ErrorCode
from mesh.events.actions import ActionEvent
from mesh.events.records import InferenceEvent, ResultEvent, encode_event, encode_result
from mesh.fleet.desired import DesiredState, Selector, encode_desired
from mesh.fleet.signing import SigningKey, sign
from mesh.node.policy import RESIDENCY_LABELS
from mesh.review.records import (
    HumanReview,
    LabelEvent,
    LabelKind,
    ReviewAnswer,
    ReviewItem,
    ReviewLabel,
    ReviewReason,
    TrafficReport,
    encode_item,
    encode_label,
    encode_label_event,
    encode_traffic,
)
from mesh.wire import (
    DTYPES,
    AnsweredFor,
    ErrorReply,
    HardExample,
    Hop,
    InferRequest,
    InferResponse,
    NodeEvent,
    NodeStatus,
    PowerStatus,
    PowerStepEvent,
    RecordedAnswer,
    ShadowEvidence,
    VersionEvidence,
    encode_error,
    encode_hard_example,
    encode_node_event,
    encode_node_status,
    encode_power_step,
    encode_request,
    encode_response,
    unpack_raw,
)
from mesh.wire.records import NODE_EVENTS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
BASE = "https://edge-mesh.dev/schemas/"
MESSAGE_SCHEMAS = [
    "infer-request",
    "infer-response",
    "error",
    "hard-example",
    "node-status",
    "rollout",
    "desired-state",
    "fleet-retry",
    "node-event",
    "artifact-signature",
    "revocation",
    "inference-event",
    "result-event",
    "action-event",
    "review-item",
    "review-label",
    "label-event",
    "traffic-report",
    "power-step",
]
ALL_SCHEMAS = [*MESSAGE_SCHEMAS, "tensor"]


def _msgpack_type(
    validator: Any, expected: str, instance: object, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if expected == "bin" and not isinstance(instance, bytes):
        yield ValidationError(f"{instance!r} is not a msgpack bin")


MsgpackValidator = validators.extend(
    Draft202012Validator, validators={"x-msgpack-type": _msgpack_type}
)


def _load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return schema


def _dialectless(name: str) -> dict[str, Any]:
    # jsonschema picks the validator class from "$schema" whenever it follows a $ref, which would
    # swap MsgpackValidator back for the stock 2020-12 one and skip x-msgpack-type in tensors.
    schema = _load(name)
    del schema["$schema"]
    return schema


REGISTRY: Registry[Any] = Registry().with_resources(
    (f"{BASE}{name}.schema.json", DRAFT202012.create_resource(_dialectless(name)))
    for name in ALL_SCHEMAS
)


def _validator(name: str) -> Any:
    return MsgpackValidator(_dialectless(name), registry=REGISTRY)


def _errors(name: str, message: object) -> list[str]:
    return [error.message for error in _validator(name).iter_errors(message)]


# --- real messages -------------------------------------------------------------------------


def _request() -> InferRequest:
    return InferRequest(
        id="req-1",
        model="digits",
        inputs={
            "x": np.arange(64, dtype=np.float32).reshape(1, 64),
            "mask": np.ones((1, 64), dtype=np.bool_),
        },
        budget_ms=200,
        residency="device",
        hops=0,
        parameters={"top_k": 1},
    )


def _request_message() -> dict[str, Any]:
    message: dict[str, Any] = unpack_raw(encode_request(_request()))
    return message


def _response_message(degraded: bool) -> dict[str, Any]:
    message: dict[str, Any] = unpack_raw(
        encode_response(
            InferResponse(
                id="req-1",
                model="digits",
                model_version="2",
                tier="device",
                node="dev-1",
                outputs={"probabilities": np.full((1, 10), 0.1, dtype=np.float32)},
                labels=[4],
                confidence=0.3,
                confidence_kind="max_softmax",
                path=[Hop("device", "dev-1", "fallback" if degraded else "ok", 4.2, "2", 0.3)],
                degraded=degraded,
                reason="breaker_open" if degraded else None,
            )
        )
    )
    return message


def _error_message() -> dict[str, Any]:
    message: dict[str, Any] = unpack_raw(
        encode_error(ErrorReply("req-1", ErrorCode.INVALID_ARGUMENT, "budget_ms must be >= 0"))
    )
    return message


def _hard_example_message(traceparent: str | None) -> dict[str, Any]:
    message: dict[str, Any] = unpack_raw(
        encode_hard_example(
            HardExample(
                id="req-1",
                model="digits",
                tier="device",
                node="dev-1",
                reason="no_responders",
                created_at=1_700_000_000.5,
                request=_request(),
                answer=RecordedAnswer(labels=[4], confidence=0.3, model_version="2"),
                traceparent=traceparent,
            )
        )
    )
    return message


def _node_status_message() -> dict[str, Any]:
    message: dict[str, Any] = unpack_raw(
        encode_node_status(
            NodeStatus(
                node="dev-1",
                tier="device",
                models={"digits": "2"},
                breakers={"gateway": "half_open"},
                backlog=3,
                ready=True,
                time=1_700_000_001.0,
            )
        )
    )
    return message


def _heartbeat_message() -> dict[str, Any]:
    message: dict[str, Any] = unpack_raw(
        encode_node_status(
            NodeStatus(
                node="edge-0",
                tier="edge",
                models={"digits": "2"},
                breakers={"gateway": "closed"},
                backlog=0,
                ready=False,
                time=1_700_000_001.0,
                site="line4",
                zone="device",
                labels={"line": "4"},
                pending={"digits": "3"},
                rejected={"digits@4": "signed by ed25519:..., which this node does not trust"},
                problems=["models: models not warm: ['digits']"],
                escalation_rate=0.08,
                drift=0.12,
                p99_ms=2.0,
                swaps=1,
                mesh_version="0.1.0",
                answered=AnsweredFor(1_699_999_000.0, {"edge-0": {"digits": 40}}),
                downgraded={"digits": "3"},
                evidence={
                    "digits": VersionEvidence(
                        version="2",
                        since=1_700_000_000.0,
                        requests=120,
                        escalated=9,
                        compared=11,
                        agreed=10,
                        audits=2,
                        latency=(0, 3) + (0,) * 13,
                        drift=0.1,
                    )
                },
                shadows={
                    "digits": ShadowEvidence(
                        version="3",
                        serving="2",
                        since=1_700_000_000.5,
                        requests=80,
                        skipped=2,
                        matched=70,
                        compared=9,
                        agreed=8,
                        serving_agreed=7,
                        latency=(5, 75) + (0,) * 13,
                        busy_s=0.01,
                    )
                },
                power=PowerStatus(
                    profile="rpi4",
                    watts=0.031,
                    window_s=10.0,
                    budget_w=0.03,
                    steps=["audits", "drift"],
                    degrade_share=0.1,
                    compute_j=1.5,
                    radio_j=2.5,
                    answers=400,
                    joules_per_answer=0.01,
                    upstream_j=0.0017,
                    battery_percent=57.0,
                    sensors=["battery:BAT0"],
                ),
            )
        )
    )
    return message


def _power_step_message(applied: bool) -> dict[str, Any]:
    event = PowerStepEvent(
        node="edge-0", tier="edge", step="coalesce", applied=applied, watts=0.052,
        budget_w=0.03 if applied else None, saved_w=None if applied else 0.008,
        steps=["audits", "drift", "coalesce"] if applied else [], degrade_share=0.0,
        time=1_700_000_001.0,
    )  # fmt: skip
    message: dict[str, Any] = unpack_raw(encode_power_step(event))
    return message


def _desired_message(selector: Selector, shadow: str | None = None) -> dict[str, Any]:
    state = DesiredState(
        "digits", "2-edge", selector, 1_700_000_003.0, by="controller", shadow=shadow
    )
    message: dict[str, Any] = unpack_raw(encode_desired(state))
    return message


def _retry_message(node: str | None) -> dict[str, Any]:
    from mesh.fleet.refusals import RetryRequest, encode_retry

    request = RetryRequest("digits", "2-edge", node, 1_700_000_006.0, by="controller")
    message: dict[str, Any] = unpack_raw(encode_retry(request))
    return message


def _node_event_message(event: str) -> dict[str, Any]:
    record = NodeEvent(
        node="edge-0",
        tier="edge",
        event=event,
        model="digits",
        version="2",
        previous="1" if event in ("swapped", "downgraded") else None,
        reason="assigned by the fleet",
        time=1_700_000_004.0,
    )
    message: dict[str, Any] = unpack_raw(encode_node_event(record))
    return message


def _signature_message() -> dict[str, Any]:
    data = b"onnx bytes"
    digest = hashlib.sha256(data).hexdigest()
    manifest = {"name": "digits", "version": "2", "sha256": digest, "thresholds": {"edge": 0.9}}
    message: dict[str, Any] = json.loads(sign(SigningKey.generate(), manifest, digest).to_json())
    return message


def _revocation_message() -> dict[str, Any]:
    from mesh.fleet.revocation import encode_revocation, sign_revocation

    revocation = sign_revocation(
        SigningKey.generate(), "digits", "3-confused", "swaps 3 and 8", time=1_700_000_006.0
    )
    message: dict[str, Any] = json.loads(encode_revocation(revocation))
    return message


def _withdrawal_message() -> dict[str, Any]:
    state = DesiredState("digits", "2-edge", Selector(node="edge-1"), 1_700_000_003.0)
    message: dict[str, Any] = unpack_raw(encode_desired(state.withdrawal(1_700_000_009.0)))
    return message


def _rollout_message() -> dict[str, Any]:
    """A rollout as the controller stores it, judged through its first stage."""
    from mesh.fleet.desired import Selector
    from mesh.fleet.rollout import Gate, Stage, StageLog, encode_rollout, new_rollout

    gate = Gate(soak_s=300, min_requests=500, max_error_rate=0.01)
    stages = [
        Stage("canary", gate, nodes=("dev-1",)),
        Stage("site-a", gate, share=0.25),
        Stage("more", gate, count=40),
        Stage("fleet", Gate(), share=1.0),
    ]
    rollout = new_rollout(
        "digits", "3", "2", Selector(tier="edge"), stages, ["dev-1", "dev-2"],
        now=1_700_000_000.0,
    )  # fmt: skip
    log = (StageLog(1_700_000_000.0, 1_700_000_001.0, 1_700_000_301.0, "pass", {"requests": 9}),)
    rollout = replace(
        rollout, state="in_progress", current_stage=1, log=log + rollout.log[1:],
        updated_at=1_700_000_301.0, flagged={"dev-9": "agreed 5 > compared 1"},
    )  # fmt: skip
    message: dict[str, Any] = json.loads(encode_rollout(rollout))
    return message


def _inference_event_message() -> dict[str, Any]:
    event = InferenceEvent(
        id="cam-1-000042",
        model="digits",
        source="cam-1",
        inputs={"input": np.zeros((1, 64), dtype=np.float32)},
        budget_ms=2000.0,
        residency="site",
        published_at=1_700_000_005.0,
    )
    message: dict[str, Any] = unpack_raw(encode_event(event))
    return message


def _review_item_message(withheld: bool) -> dict[str, Any]:
    item = ReviewItem(
        id="r0123456789abcdef01234567", model="digits", reason=ReviewReason.DISAGREEMENT,
        why="the tier above answered otherwise", tier="edge", node="edge-0", site="site",
        zone="device", created_at=1_700_000_005.0, request_id="q-1", caller="app",
        human_review=HumanReview.AUTO, residency="device" if withheld else "any",
        withheld="residency device" if withheld else None, row=0, rows=1,
        inputs=None if withheld else {"input": np.zeros((1, 64), dtype=np.float32)},
        answers=(
            ReviewAnswer("edge", "edge-0", "3", 4, 0.93, served=True),
            ReviewAnswer("gateway", "gateway-0", "2", 9, 0.71),
        ),
        classes=tuple(str(i) for i in range(10)), queued_at=1_700_000_005.5,
        trace_id="0af7651916cd43dd8448eb211c80319c", detail={"threshold": 0.6},
    )  # fmt: skip
    message: dict[str, Any] = unpack_raw(encode_item(item))
    return message


def _review_label_message(kind: LabelKind) -> dict[str, Any]:
    label = 7 if kind is LabelKind.LABEL else None
    record = ReviewLabel("r01", "digits", kind, label, "7" if label else None, "alice", 1.7e9)
    message: dict[str, Any] = unpack_raw(encode_label(record))
    return message


def _label_event_message() -> dict[str, Any]:
    event = LabelEvent("r01", "digits", "q-1", 7, "7", "alice", 1.7e9, relabel=True)
    message: dict[str, Any] = unpack_raw(encode_label_event(event))
    return message


def _traffic_message() -> dict[str, Any]:
    report = TrafficReport("edge-0", "edge", True, "site", "digits", "3", 1.7e9, 1000, 40, 1.8e9)
    message: dict[str, Any] = unpack_raw(encode_traffic(report))
    return message


def _result_event_message() -> dict[str, Any]:
    reply = encode_error(ErrorReply("cam-1-000042", ErrorCode.INVALID_ARGUMENT, "no inputs"))
    result = ResultEvent(
        "cam-1-000042", "digits", "cam-1", 1_700_000_005.0, 1_700_000_005.2, 42, reply
    )
    message: dict[str, Any] = unpack_raw(encode_result(result))
    return message


def _action_event_message() -> dict[str, Any]:
    action = ActionEvent(
        rule="alert", event_id="cam-1-000042", model="digits", source="cam-1", labels=[3],
        confidence=0.97, tier="edge", degraded=False, reason=None, error=None, time=1.0,
    )  # fmt: skip
    message: dict[str, Any] = unpack_raw(action.to_msgpack())
    return message


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
REAL_MESSAGES: dict[str, tuple[str, Any]] = {
    "request": ("infer-request", _request_message),
    "response": ("infer-response", lambda: _response_message(degraded=False)),
    "degraded response": ("infer-response", lambda: _response_message(degraded=True)),
    "error": ("error", _error_message),
    "hard example": ("hard-example", lambda: _hard_example_message(TRACEPARENT)),
    "hard example untraced": ("hard-example", lambda: _hard_example_message(None)),
    "node status": ("node-status", _node_status_message),
    "heartbeat": ("node-status", _heartbeat_message),
    "rollout": ("rollout", _rollout_message),
    "desired state for a site's edge": (
        "desired-state",
        lambda: _desired_message(Selector(tier="edge", site="line4")),
    ),
    "desired state by label": (
        "desired-state",
        lambda: _desired_message(Selector(labels={"line": "4"})),
    ),
    "desired state with a shadow": (
        "desired-state",
        lambda: _desired_message(Selector(node="edge-0"), shadow="3-edge"),
    ),
    "retry on one node": ("fleet-retry", lambda: _retry_message("edge-0")),
    "retry on every node": ("fleet-retry", lambda: _retry_message(None)),
    "desired state withdrawn": ("desired-state", _withdrawal_message),
    "revocation": ("revocation", _revocation_message),
    "node event downgraded": ("node-event", lambda: _node_event_message("downgraded")),
    "node event swapped": ("node-event", lambda: _node_event_message("swapped")),
    "node event rejected": ("node-event", lambda: _node_event_message("rejected")),
    "artifact signature": ("artifact-signature", _signature_message),
    "inference event": ("inference-event", _inference_event_message),
    "result event": ("result-event", _result_event_message),
    "action event": ("action-event", _action_event_message),
    "review item": ("review-item", lambda: _review_item_message(withheld=False)),
    "review item withheld": ("review-item", lambda: _review_item_message(withheld=True)),
    "review label": ("review-label", lambda: _review_label_message(LabelKind.LABEL)),
    "review skip": ("review-label", lambda: _review_label_message(LabelKind.SKIP)),
    "label event": ("label-event", _label_event_message),
    "traffic report": ("traffic-report", _traffic_message),
    "power step taken": ("power-step", lambda: _power_step_message(True)),
    "power step given back": ("power-step", lambda: _power_step_message(False)),
}


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_is_valid_draft_2020_12_with_id_title_and_descriptions(name: str) -> None:
    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{BASE}{name}.schema.json"
    assert schema["title"]
    assert schema["description"]


def _property_maps(node: object) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                yield from value.items()
            yield from _property_maps(value)
    elif isinstance(node, list):
        for item in node:
            yield from _property_maps(item)


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_every_property_has_a_description(name: str) -> None:
    undocumented = [prop for prop, spec in _property_maps(_load(name)) if "description" not in spec]
    assert undocumented == []


@pytest.mark.parametrize("name", MESSAGE_SCHEMAS)
def test_message_schema_is_open_world_and_requires_version_and_kind(name: str) -> None:
    schema = _load(name)
    assert "additionalProperties" not in schema
    assert {"v", "kind"} <= set(schema["required"])


@pytest.mark.parametrize(("name", "build"), REAL_MESSAGES.values(), ids=REAL_MESSAGES.keys())
def test_real_message_validates_against_its_schema(name: str, build: Any) -> None:
    assert _errors(name, build()) == []


@pytest.mark.parametrize(("name", "build"), REAL_MESSAGES.values(), ids=REAL_MESSAGES.keys())
def test_message_missing_a_required_field_is_rejected(name: str, build: Any) -> None:
    for field in _load(name)["required"]:
        message = build()
        del message[field]
        assert any(f"'{field}' is a required property" in e for e in _errors(name, message)), field


@pytest.mark.parametrize(("name", "build"), REAL_MESSAGES.values(), ids=REAL_MESSAGES.keys())
def test_message_with_unknown_fields_still_validates(name: str, build: Any) -> None:
    message = build()
    message["added_in_a_later_release"] = {"anything": [1, b"\x00"]}
    assert _errors(name, message) == []


def test_schema_enums_match_the_codec() -> None:
    item = _load("review-item")
    assert set(item["properties"]["reason"]["enum"]) == {r.value for r in ReviewReason}
    assert set(item["properties"]["human_review"]["enum"]) == {h.value for h in HumanReview}
    tensor = _load("tensor")
    request = _load("infer-request")
    error = _load("error")
    assert set(tensor["properties"]["dtype"]["enum"]) == DTYPES
    assert set(request["properties"]["residency"]["enum"]) == RESIDENCY_LABELS
    assert set(error["properties"]["code"]["enum"]) == {code.value for code in ErrorCode}
    assert tuple(_load("node-event")["properties"]["event"]["enum"]) == NODE_EVENTS


def test_tensor_data_sent_as_str_instead_of_bin_is_rejected() -> None:
    message = _request_message()
    message["inputs"]["x"]["data"] = "not bytes"
    assert any("is not a msgpack bin" in e for e in _errors("infer-request", message))


def test_hard_example_with_an_invalid_nested_request_is_rejected() -> None:
    message = _hard_example_message(None)
    message["request"]["inputs"]["x"]["dtype"] = "complex64"
    assert _errors("hard-example", message) != []
    message = _hard_example_message(None)
    message["request"]["inputs"]["x"]["data"] = list(range(4))
    assert any("is not a msgpack bin" in e for e in _errors("hard-example", message))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("kind", "infer_response"),
        ("id", ""),
        ("budget_ms", -1),
        ("residency", "mars"),
        ("hops", -1),
        ("inputs", {}),
    ],
)
def test_request_with_a_bad_value_is_rejected(field: str, value: object) -> None:
    message = _request_message()
    message[field] = value
    assert _errors("infer-request", message) != []


@pytest.mark.parametrize(
    "stage",
    [
        {"name": "both", "nodes": ["dev-1"], "share": 0.5, "gate": {}},
        {"name": "neither", "gate": {}},
        {"name": "no gate", "share": 0.5},
        {"name": "too much", "share": 1.5, "gate": {}},
    ],
    ids=["nodes and share", "neither nodes nor share", "no gate", "share above 1"],
)
def test_rollout_stage_must_name_nodes_or_a_share_and_a_gate(stage: dict[str, Any]) -> None:
    message = _rollout_message()
    message["stages"] = [stage]
    assert _errors("rollout", message) != []


def test_node_status_with_negative_backlog_is_rejected() -> None:
    message = _node_status_message()
    message["backlog"] = -1
    assert _errors("node-status", message) != []


def test_schema_examples_pack_to_msgpack_the_decoder_reads() -> None:
    # The schemas describe the unpacked structure; packing it back must be lossless.
    message = _request_message()
    assert msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False) == message


def test_a_real_signature_file_validates_and_one_without_its_signature_does_not() -> None:
    validator = Draft202012Validator(_load("artifact-signature"))
    message = _signature_message()
    assert list(validator.iter_errors(message)) == []
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    errors = [error.message for error in validator.iter_errors(unsigned)]
    assert errors == ["'signature' is a required property"]
