"""Admission: a node-wide cap on waiting requests and a share per caller (pure)."""

from __future__ import annotations

import pytest

from mesh.node.admission import UNKNOWN_CALLER, Admission, caller_of


def test_the_caller_is_the_identity_whose_inbox_gets_the_answer() -> None:
    assert caller_of("_INBOX_app1.abc.12") == "_INBOX_app1"
    assert caller_of("_INBOX_edge-0.x") == "_INBOX_edge-0"
    assert caller_of("_INBOX.legacy.1") == UNKNOWN_CALLER
    assert caller_of("anything") == UNKNOWN_CALLER


def test_a_flooding_caller_is_held_to_its_share_while_others_still_get_in() -> None:
    admission = Admission(total=10, per_caller=4)
    for _ in range(4):
        assert admission.refusal("flood") is None
        admission.acquire("flood")
    refusal = admission.refusal("flood")
    assert refusal is not None and "flood" in refusal and "share" in refusal
    for caller in ("other", "other", "other", "other", "third", "third"):
        assert admission.refusal(caller) is None
        admission.acquire(caller)
    assert admission.refusal("other") is not None
    assert admission.inflight == 10
    assert admission.refusal("fourth") == "10 requests in flight"


def test_released_slots_come_back_to_the_caller_and_the_node() -> None:
    admission = Admission(total=2, per_caller=1)
    admission.acquire("a")
    assert admission.refusal("a") is not None
    admission.release("a")
    assert admission.refusal("a") is None and admission.inflight == 0
    assert admission.held_by("a") == 0


def test_no_share_means_the_node_wide_cap_only() -> None:
    admission = Admission(total=3)
    for _ in range(3):
        assert admission.refusal("a") is None
        admission.acquire("a")
    assert admission.refusal("b") == "3 requests in flight"


@pytest.mark.parametrize(("total", "share"), [(0, 0), (1, -1)])
def test_nonsense_bounds_are_refused(total: int, share: int) -> None:
    with pytest.raises(ValueError):
        Admission(total=total, per_caller=share)
