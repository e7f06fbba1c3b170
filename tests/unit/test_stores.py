"""Acknowledgements of asynchronous JetStream publishes, read the way nats-py would map them."""

from __future__ import annotations

import nats.js.errors
import pytest

from mesh.transport.stores import Stored, _stored


def test_an_acknowledgement_gives_the_stream_the_sequence_and_whether_it_was_a_duplicate() -> None:
    assert _stored(b'{"stream":"MESH_EVENTS","seq":7}', None) == Stored("MESH_EVENTS", 7, False)
    assert _stored(b'{"stream":"S","seq":3,"duplicate":true}', None) == Stored("S", 3, True)


def test_a_refusal_keeps_nats_py_s_error_types() -> None:
    refused = _stored(
        b'{"error":{"code":503,"err_code":10077,"description":"maximum messages per subject '
        b'exceeded"}}',
        None,
    )
    assert isinstance(refused, nats.js.errors.APIError)
    assert "per subject" in (refused.description or "")
    assert isinstance(_stored(b"", {"Status": "503"}), nats.js.errors.NoStreamResponseError)


@pytest.mark.parametrize("data", [b"", b"not json", b"[1,2]", b'{"stream":"S"}', b"\xff\xfe"])
def test_an_unreadable_acknowledgement_is_an_error_not_a_crash(data: bytes) -> None:
    assert isinstance(_stored(data, None), nats.js.errors.APIError)
