"""The ingress's guard, pure: who a caller is, its share of requests and bytes in flight, and
JSON read in bounded steps with a depth limit (issue 25: an ingress that refuses before it
reads)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from mesh.errors import InvalidArgumentError, ResourceExhaustedError
from mesh.ingress import oip, oip_rest
from mesh.ingress.callers import Callers, peer_address
from mesh.ingress.gate import Gate, GateLimits
from mesh.ingress.shares import ByteShares
from mesh.ingress.steps import finish
from mesh.settings import IngressSettings

# --- callers -------------------------------------------------------------------------------


def test_a_named_token_names_its_caller_and_the_shared_one_gives_the_address() -> None:
    callers = Callers("shared", {"cam-line-4": "t-cam", "billing": "t-bill"})
    assert callers.identify("Bearer t-cam", "10.0.0.7") == "cam-line-4"
    assert callers.identify("bearer  t-bill ", "10.0.0.7") == "billing"
    assert callers.identify("Bearer shared", "10.0.0.7") == "10.0.0.7"
    for wrong in ("", "Bearer", "Bearer nope", "Basic t-cam", "t-cam", "Bearer t-cam2"):
        assert callers.identify(wrong, "10.0.0.7") is None, wrong


def test_without_tokens_every_caller_is_its_address() -> None:
    callers = Callers()
    assert not callers.required
    assert callers.identify("", "192.0.2.1") == "192.0.2.1"
    assert callers.identify("Bearer anything", "192.0.2.1") == "192.0.2.1"


def test_tokens_that_would_make_two_callers_one_are_refused() -> None:
    with pytest.raises(ValueError, match="shared token"):
        Callers("same", {"a": "same"})
    with pytest.raises(ValueError, match="same token"):
        Callers("", {"a": "x", "b": "x"})


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50123", "127.0.0.1"),
        ("ipv6:[::1]:50123", "::1"),
        ("ipv6:%5B::1%5D:50123", "::1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_a_grpc_peer_is_its_ip_without_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


# --- bytes in flight -----------------------------------------------------------------------


def test_a_caller_past_its_share_of_bytes_is_refused_while_another_gets_in() -> None:
    shares = ByteShares(total=100, per_caller=40)
    assert shares.refusal("flood", 30) is None
    shares.acquire("flood", 30)
    refusal = shares.refusal("flood", 20)
    assert refusal is not None and "flood has 30 bytes" in refusal and "its share: 40" in refusal
    for caller in ("b", "c"):
        assert shares.refusal(caller, 35) is None
        shares.acquire(caller, 35)
    assert shares.refusal("d", 1) == "100 bytes of bodies in flight (the ingress holds 100)"
    assert shares.never_fits(41) and "over a caller's share" in str(shares.refusal("d", 41))
    shares.release("b", 35)
    assert shares.inflight == 65 and shares.held_by("b") == 0
    assert shares.refusal("d", 35) is None


def test_shares_that_could_never_hold_a_body_are_refused() -> None:
    with pytest.raises(ValueError):
        ByteShares(total=10, per_caller=20)
    with pytest.raises(ValueError):
        GateLimits(max_body=100, bytes_per_caller=50)


def _gate(**limits: Any) -> Gate:
    values: dict[str, Any] = {
        "max_body": 100, "bytes_in_flight": 300, "bytes_per_caller": 100,
        "requests": 10, "requests_per_caller": 3, "wait_s": 0.3,
    }  # fmt: skip
    values.update(limits)
    return Gate(GateLimits(**values))


async def test_a_body_waits_for_its_callers_bytes_then_is_let_in() -> None:
    gate = _gate(wait_s=2.0)
    first = gate.enter("flood")
    await first.reserve(80)
    second = gate.enter("flood")
    waiting = asyncio.create_task(second.reserve(80))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    other = gate.enter("calm")  # another caller is not behind the flood
    await asyncio.wait_for(other.reserve(100), 0.1)
    first.keep(10)  # what the first body took once read: the rest is free again
    await asyncio.wait_for(waiting, 1.0)
    assert gate.bytes.held_by("flood") == 90
    for ticket in (first, second, other):
        ticket.close()
    assert gate.bytes.inflight == 0 and gate.requests.inflight == 0


async def test_a_body_that_finds_no_room_in_time_is_resource_exhausted() -> None:
    gate = _gate(wait_s=0.2)
    with gate.enter("flood") as held:
        await held.reserve(100)
        with gate.enter("flood") as late:
            started = asyncio.get_running_loop().time()
            with pytest.raises(ResourceExhaustedError, match=r"within 0\.2 s: flood has 100 bytes"):
                await late.reserve(50)
            assert asyncio.get_running_loop().time() - started >= 0.19
        with gate.enter("calm") as huge, pytest.raises(ResourceExhaustedError, match="over a"):
            await huge.reserve(101)  # never fits: refused at once
    assert gate.bytes.inflight == 0


async def test_many_calls_that_each_reserve_the_largest_body_pass_in_turn() -> None:
    # gRPC never says a message's length first: each call holds the largest while it is read,
    # then keeps what it took; one caller's 60 calls get in one after another, in order
    gate = _gate(requests=100, requests_per_caller=100, wait_s=2.0)
    order: list[int] = []

    async def call(i: int) -> None:
        with gate.enter("grpc-client") as ticket:
            await ticket.reserve(100)
            order.append(i)
            await asyncio.sleep(0)  # the message is read
            ticket.keep(1)
            await asyncio.sleep(0.01)  # the call is answered

    await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(60))), 5.0)
    assert order == list(range(60))
    assert gate.bytes.inflight == 0 and gate.requests.inflight == 0 and not gate._waiters


async def test_a_wait_that_is_cancelled_or_ends_leaves_nothing_held() -> None:
    gate = _gate(wait_s=0.2)
    with gate.enter("flood") as held:
        await held.reserve(100)
        with gate.enter("flood") as cancelled, gate.enter("flood") as late:
            waiting = asyncio.create_task(cancelled.reserve(60))
            timing_out = asyncio.create_task(late.reserve(60))
            await asyncio.sleep(0.01)
            waiting.cancel()
            held.keep(0)  # room for one of them, given back as the other is cancelled
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await timing_out  # the one still waiting got it
            assert gate.bytes.held_by("flood") == 60
    assert gate.bytes.inflight == 0 and not gate._waiters


def test_a_callers_requests_past_its_share_are_refused_at_once() -> None:
    gate = _gate()
    tickets = [gate.enter("flood") for _ in range(3)]
    with pytest.raises(ResourceExhaustedError, match="3 requests of flood in flight"):
        gate.enter("flood")
    gate.enter("calm").close()
    tickets[0].close()
    tickets[0].close()  # closing twice gives back once
    gate.enter("flood")
    assert gate.requests.inflight == 3


# --- JSON within bounds --------------------------------------------------------------------


def _body(data: Any, shape: list[int], datatype: str = "FP32", **extra: Any) -> bytes:
    tensor = {"name": "input", "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
        _body([[[[1]]]], [1]).replace(b"[[[[1]]]]", b"[" * 40 + b"1" + b"]" * 40),
    ],
    ids=["arrays", "objects", "in-data"],
)
def test_json_nested_past_the_limit_is_refused_naming_the_limit(text: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match=f"limit of {oip_rest.MAX_DEPTH} levels"):
        oip_rest.parse_rest(text, None, "digits", None)


def test_brackets_inside_strings_and_escapes_do_not_count_as_nesting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(oip_rest, "STEP_BYTES", 7)  # escapes and strings cut across slices
    tricky = 'id [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ \\" [[[[ \\\\'
    text = _body([1.0, 2.0], [1, 2], id=tricky * 3)
    parsed = oip_rest.parse_rest(text, None, "digits", None)
    assert parsed.id == tricky * 3
    assert parsed.inputs[0].data.tolist() == [[1.0, 2.0]]
    deep = '{"id": "\\\\", "inputs": ' + "[" * 33 + "]" * 33 + "}"
    with pytest.raises(InvalidArgumentError, match="levels"):
        oip_rest.parse_rest(deep.encode(), None, "digits", None)


def test_a_large_body_is_parsed_in_many_short_steps_to_the_same_array() -> None:
    x = np.random.default_rng(0).random((20_000, 64)).astype(np.float32)
    text = _body(x.tolist(), [20_000, 64])
    steps = oip_rest.parse_rest_steps(text, None, "digits", None)
    count = 0
    while True:
        try:
            next(steps)
            count += 1
        except StopIteration as done:
            parsed = done.value
            break
    assert len(text) > 10 * (1 << 20) and count >= len(text) >> 20
    assert np.array_equal(parsed.inputs[0].data, x)


@pytest.mark.parametrize(
    ("data", "shape", "datatype", "says"),
    [
        ([1, 2, 3], [1, 4], "FP32", "input 'input' has 3 values; shape [1, 4] takes 4"),
        ([1, 2, 3, 4, 5], [1, 4], "FP32", "input 'input' has 5 values; shape [1, 4] takes 4"),
        ([1, "x"], [1, 2], "FP32", "data is not FP32"),
        ([1, 300], [1, 2], "UINT8", "data is not UINT8"),
        ([[], []], [1, 2], "FP32", "has 0 values"),
        ({"a": 1}, [1, 1], "FP32", "needs 'data' as a list"),
        (None, [1, 1], "FP32", "needs 'data' as a list"),
    ],
)
def test_data_that_does_not_fit_its_shape_or_datatype_says_so(
    data: Any, shape: list[int], datatype: str, says: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(says)):
        oip_rest.parse_rest(_body(data, shape, datatype), None, "digits", None)


def test_values_are_read_as_leniently_as_numpy_reads_them() -> None:
    ints = oip_rest.parse_rest(_body([[1, 2.0], [3, 4]], [2, 2], "INT64"), None, "d", None)
    [tensor] = ints.inputs
    assert tensor.data.dtype == np.int64 and tensor.data.tolist() == [[1, 2], [3, 4]]
    flags = oip_rest.parse_rest(_body([True, 0, 1], [3], "BOOL"), None, "d", None)
    assert flags.inputs[0].data.tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"\xff\xfe{", "must be a JSON object"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [], 2]}]}',
            "nested as its shape",
        ),
        (b'{"inputs": [', "not JSON"),
        (b'{"inputs": 3}', "does not follow the protocol"),
        (b'{"inputs": [], "parameters": {"a": [1]}}', "does not follow the protocol"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [true]}]}', "protocol"),
        (b"  [1]", "must be a JSON object"),
        (b"", "not JSON"),
    ],
)
def test_malformed_json_is_a_clear_invalid_argument(text: bytes, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        oip_rest.parse_rest(text, None, "digits", None)


def test_answers_render_as_the_json_they_always_were() -> None:
    probs = np.random.default_rng(1).random((300_000, 2)).astype(np.float32)
    labels = np.arange(300_000, dtype=np.int64)
    answer = oip.OipResponse(
        "digits", "3", "r",
        [oip.OipTensor("label", "INT64", [300_000], labels),
         oip.OipTensor("probabilities", "FP32", [300_000, 2], probs)],
        {"tier": "edge", "confidence": 0.5, "degraded": False}, [False, False],
    )  # fmt: skip
    steps = oip_rest.render_rest_steps(answer)
    payload, length = finish(steps)
    assert length is None
    body = json.loads(payload)
    assert body["parameters"] == {"tier": "edge", "confidence": 0.5, "degraded": False}
    assert body["outputs"][0]["data"] == labels.tolist()
    assert np.array_equal(np.asarray(body["outputs"][1]["data"], np.float32), probs.ravel())


def test_typed_grpc_values_convert_in_steps_and_refuse_a_wrong_count() -> None:
    values = list(range(300_000))
    steps = oip.values_steps(values, np.dtype(np.int32), [3, 100_000], "input 'x'")
    assert next(steps) is None  # more than one step
    assert finish(steps).shape == (3, 100_000)
    with pytest.raises(InvalidArgumentError, match="input 'x' has 3 values; shape"):
        finish(oip.values_steps([1, 2, 3], np.dtype(np.int32), [2, 2], "input 'x'"))


# --- settings ------------------------------------------------------------------------------


def test_shares_default_from_the_largest_body_and_must_hold_one() -> None:
    settings = IngressSettings(max_body_bytes=8 << 20)
    assert settings.body_bytes_per_caller == 8 << 20
    assert settings.body_bytes_in_flight == 32 << 20
    with pytest.raises(ValidationError, match="at least max_body_bytes"):
        IngressSettings(max_body_bytes=8 << 20, body_bytes_per_caller=1 << 20)
    with pytest.raises(ValidationError, match="caller name"):
        IngressSettings(callers={"bad.name": "t"})
    with pytest.raises(ValidationError, match="also a named caller"):
        IngressSettings(token="t", callers={"a": "t"})
