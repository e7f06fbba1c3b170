"""The review queue's pure parts: records, the sampling limits on a fake clock, the desk's ledger,
the API's checks, and the ground truth and cost figures on a known labelled set."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from mesh.errors import InvalidArgumentError
from mesh.review import api
from mesh.review.ledger import ReviewLedger, Status
from mesh.review.records import (
    HumanReview,
    LabelEvent,
    LabelKind,
    ReviewAnswer,
    ReviewItem,
    ReviewLabel,
    ReviewReason,
    TrafficReport,
    carried_answers,
    carry_answer,
    check_human_review,
    decode_item,
    decode_label,
    decode_label_event,
    decode_traffic,
    encode_item,
    encode_label,
    encode_label_event,
    encode_traffic,
    human_review_of,
    item_id,
)
from mesh.review.sampling import CandidateGate, QueueLimits, WindowLimits
from mesh.review.truth import CostModel, Share, TrafficLedger, daily_report, version_stats
from mesh.topology import parameters

CLASSES = tuple(str(i) for i in range(10))
#: noon UTC on a fixed day, so every figure falls on known days.
NOON = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC).timestamp()
DAY = 86400.0


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def item(
    n: int,
    *,
    reason: ReviewReason = ReviewReason.UNSURE,
    answers: tuple[ReviewAnswer, ...] | None = None,
    queued_at: float | None = NOON,
    withheld: str | None = None,
    model: str = "digits",
) -> ReviewItem:
    return ReviewItem(
        id=item_id(model, "app", f"req-{n}"),
        model=model,
        reason=reason,
        why="because",
        tier="cloud",
        node="cloud-0",
        site="hub",
        zone="cloud",
        created_at=NOON - 1,
        request_id=f"req-{n}",
        caller="app",
        human_review=HumanReview.AUTO,
        residency="any",
        withheld=withheld,
        row=0,
        rows=1,
        inputs=None if withheld else {"input": np.arange(64, dtype=np.float32)[None, :]},
        answers=answers
        or (
            ReviewAnswer("edge", "edge-0", "e1", 3, 0.41),
            ReviewAnswer("cloud", "cloud-0", "c1", 5, 0.58, served=True),
        ),
        classes=CLASSES,
        queued_at=queued_at,
        trace_id="0" * 31 + "1",
        detail={"threshold": 0.6},
    )


def label(entry_id: str, value: int | None, revision: int, *, at: float = NOON) -> ReviewLabel:
    kind = LabelKind.SKIP if value is None else LabelKind.LABEL
    name = None if value is None else CLASSES[value]
    return ReviewLabel(entry_id, "digits", kind, value, name, "alice", at, revision=revision)


# ---- records -------------------------------------------------------------------------------


def test_an_item_travels_whole_and_a_withheld_one_says_why() -> None:
    original = item(1)
    back = decode_item(encode_item(original))
    assert back.inputs is not None and original.inputs is not None
    assert np.array_equal(back.inputs["input"], original.inputs["input"])
    assert replace(back, inputs=None) == replace(original, inputs=None)
    withheld = decode_item(encode_item(item(2, withheld="residency device")))
    assert withheld.inputs is None and withheld.withheld == "residency device"


def test_an_item_with_neither_input_nor_reason_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="either its input"):
        encode_item(replace(item(1), inputs=None))


def test_labels_label_events_and_traffic_round_trip() -> None:
    record = label("r1", 7, 0)
    assert decode_label(encode_label(record), revision=4) == replace(record, revision=4)
    event = LabelEvent("r1", "digits", "req-1", 7, "7", "alice", NOON, relabel=True)
    assert decode_label_event(encode_label_event(event)) == event
    report = TrafficReport("e0", "edge", True, "site", "digits", "v1", 1.0, 10, 2, 5.0)
    assert decode_traffic(encode_traffic(report)) == report
    with pytest.raises(InvalidArgumentError):
        decode_traffic(encode_traffic(replace(report, escalated=11)))


def test_one_item_per_request_whoever_offers_it() -> None:
    assert item_id("digits", "app", "r1") == item_id("digits", "app", "r1")
    assert item_id("digits", "app", "r1") != item_id("digits", "other", "r1")
    assert item_id("digits", None, "r1").isalnum()


def test_human_review_is_checked_where_it_enters_and_read_leniently_after() -> None:
    assert check_human_review("ALWAYS") is HumanReview.ALWAYS
    with pytest.raises(InvalidArgumentError, match="sometimes"):
        check_human_review("sometimes")
    assert human_review_of({}) is HumanReview.AUTO
    assert human_review_of({parameters.HUMAN_REVIEW: "never"}) is HumanReview.NEVER
    assert human_review_of({parameters.HUMAN_REVIEW: 3}) is HumanReview.AUTO


def test_answers_carried_up_give_each_tier_its_label_for_the_row() -> None:
    first = carry_answer(None, ReviewAnswer("edge", "e0", "v1", None, 0.4), [1, 2, 3])
    both = carry_answer(first, ReviewAnswer("gateway", "g0", "v2", None, 0.5), [1, 9, 3])
    answers = carried_answers(both, 1)
    assert [(a.tier, a.label, a.confidence) for a in answers] == [
        ("edge", 2, 0.4),
        ("gateway", 9, 0.5),
    ]
    assert carried_answers("not json", 0) == [] and carried_answers('[["x"]]', 0) == []
    too_many = carry_answer(None, ReviewAnswer("edge", "e" * 5000, "v", None, 0.1), [1])
    assert too_many is None


# ---- sampling ------------------------------------------------------------------------------


def test_queue_limits_hold_per_minute_hour_and_day_and_free_up_as_time_passes() -> None:
    clock = Clock()
    limits = QueueLimits(WindowLimits(per_minute=3, per_hour=5, per_day=6), clock=clock)
    admitted = [limits.admit("digits", ReviewReason.UNSURE)[0].admitted for _ in range(4)]
    assert admitted == [True, True, True, False]
    verdict, _ = limits.admit("digits", ReviewReason.UNSURE)
    assert "3 a minute" in verdict.why
    clock.now += 61
    assert [limits.admit("digits", ReviewReason.UNSURE)[0].admitted for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert "5 a hour" in limits.admit("digits", ReviewReason.UNSURE)[0].why
    clock.now += 3601
    assert limits.admit("digits", ReviewReason.UNSURE)[0].admitted
    assert "6 a day" in limits.admit("digits", ReviewReason.UNSURE)[0].why
    assert limits.admit("other", ReviewReason.UNSURE)[0].admitted  # per model
    clock.now += DAY
    assert limits.admit("digits", ReviewReason.UNSURE)[0].admitted


def test_a_reason_has_its_share_and_a_duplicate_is_uncounted() -> None:
    clock = Clock()
    limits = QueueLimits(
        WindowLimits(per_minute=10),
        reasons={ReviewReason.SAMPLE: WindowLimits(per_minute=2)},
        models={"big": WindowLimits(per_minute=100)},
        clock=clock,
    )
    samples = [limits.admit("digits", ReviewReason.SAMPLE) for _ in range(3)]
    assert [v.admitted for v, _ in samples] == [True, True, False]
    assert limits.admit("digits", ReviewReason.UNSURE)[0].admitted
    limits.release("digits", ReviewReason.SAMPLE, samples[0][1])
    assert limits.admit("digits", ReviewReason.SAMPLE)[0].admitted
    assert all(limits.admit("big", ReviewReason.UNSURE)[0].admitted for _ in range(50))


def test_a_restarted_intake_counts_what_was_queued_before() -> None:
    clock = Clock()
    limits = QueueLimits(WindowLimits(per_day=3), clock=clock)
    limits.seed([("digits", ReviewReason.UNSURE, NOON - 10)] * 2)
    limits.seed([("digits", ReviewReason.UNSURE, NOON - 2 * DAY)])  # too old to count
    assert [limits.admit("digits", ReviewReason.UNSURE)[0].admitted for _ in range(2)] == [
        True,
        False,
    ]
    assert limits.counts("digits")["day"] == 3


def test_the_gate_honours_the_callers_wish_then_drift_then_the_sample() -> None:
    draws = iter([0.5, 0.01, 0.01, 0.5, 0.5])
    gate = CandidateGate(
        sample_rate=0.02, drift_rate=0.1, per_minute=2, clock=Clock(), rand=lambda: next(draws)
    )
    assert gate.for_confident(HumanReview.NEVER, True) is None
    assert gate.for_confident(HumanReview.ALWAYS, False) is ReviewReason.REQUESTED
    assert gate.for_confident(HumanReview.AUTO, False) is None  # 0.5 over the sample rate
    assert gate.for_confident(HumanReview.AUTO, True) is ReviewReason.DRIFT  # 0.01
    assert gate.for_confident(HumanReview.AUTO, False) is ReviewReason.SAMPLE  # 0.01


def test_a_model_may_have_its_own_rates() -> None:
    gate = CandidateGate(
        sample_rate=0.0,
        drift_rate=0.0,
        per_minute=10,
        models={"rare": (1.0, 0.0)},
        rand=lambda: 0.5,
    )
    assert gate.for_confident(HumanReview.AUTO, False, "digits") is None
    assert gate.for_confident(HumanReview.AUTO, False, "rare") is ReviewReason.SAMPLE
    assert gate.sampled("rare") and not gate.sampled("digits")


def test_the_gate_bounds_a_node_per_minute_but_not_what_a_caller_asked_for() -> None:
    clock = Clock()
    gate = CandidateGate(sample_rate=1, drift_rate=0, per_minute=2, clock=clock)
    assert [gate.allow("digits", HumanReview.AUTO) for _ in range(3)] == [True, True, False]
    assert gate.allow("digits", HumanReview.ALWAYS)
    assert not gate.allow("digits", HumanReview.NEVER)
    clock.now += 60.5
    assert gate.allow("digits", HumanReview.AUTO)


# ---- the ledger and the API's checks ---------------------------------------------------------


def test_the_ledger_lists_pending_items_oldest_first_and_keeps_every_label() -> None:
    ledger = ReviewLedger()
    first, second = item(1), item(2, reason=ReviewReason.SAMPLE)
    early = label(second.id, 4, 10)  # a label read before its item
    ledger.record(early)
    ledger.add(first, 1)
    ledger.add(second, 2)
    ledger.add(first, 3)  # a second copy keeps the first
    entries, total = ledger.pending()
    assert [e.id for e in entries] == [first.id] and total == 1
    entry = ledger.find(first.id)
    assert entry is not None and entry.item.inputs is None and entry.sequence == 1
    ledger.record(label(first.id, 3, 11))
    ledger.record(label(first.id, 3, 11))  # seen twice, kept once
    ledger.record(label(first.id, 5, 12))
    assert entry.status is Status.LABELLED and entry.label == 5 and entry.revision == 12
    assert [r.label for r in entry.labels] == [3, 5]
    assert ledger.pending(status=None, limit=1)[1] == 2
    assert ledger.pending(reason=ReviewReason.SAMPLE, status=Status.LABELLED)[1] == 1


def test_a_label_must_be_one_of_the_models_classes() -> None:
    target = item(1)
    assert api.resolve_class(3, target) == (3, "3")
    assert api.resolve_class("7", target) == (7, "7")
    named = replace(target, classes=("cat", "dog"))
    assert api.resolve_class("dog", named) == (1, "dog")
    for bad in (10, -1, "horse", True, None, 2.5):
        with pytest.raises(InvalidArgumentError, match="not"):
            api.resolve_class(bad, named if bad == "horse" else target)


def test_bad_requests_get_typed_errors() -> None:
    with pytest.raises(InvalidArgumentError):
        api.parse_body(b"[1]")
    with pytest.raises(InvalidArgumentError):
        api.list_query({"limit": 0})
    with pytest.raises(InvalidArgumentError, match="reason"):
        api.list_query({"reason": "boredom"})
    with pytest.raises(InvalidArgumentError):
        api.item_of({"id": "a.b"})
    with pytest.raises(InvalidArgumentError, match="class"):
        api.label_request({"id": "r1"})
    body, headers = api.encode_error(InvalidArgumentError("no"))
    assert headers["Nats-Service-Error-Code"] == "400"
    with pytest.raises(InvalidArgumentError, match="no"):
        api.decode_reply(body)
    assert api.decode_reply(api.encode_result({"a": 1})) == {"a": 1}


def test_an_item_view_has_the_contract_fields_and_shows_the_input_when_asked() -> None:
    ledger = ReviewLedger()
    full = item(1)
    entry = ledger.add(full, 1)
    view = api.item_view(entry)
    assert {"id", "model", "reason", "answers"} <= set(view)
    assert view["answers"][1] == {
        "tier": "cloud", "node": "cloud-0", "version": "c1", "label": 5, "class": "5",
        "confidence": 0.58, "served": True,
    }  # fmt: skip
    shown = api.item_view(entry, full)
    assert shown["input"]["input"]["shape"] == [1, 64] and shown["history"] == []


# ---- ground truth and cost --------------------------------------------------------------------


def labelled_set() -> tuple[ReviewLedger, TrafficLedger]:
    """Twenty labelled items: the edge right on 8 of 20, the cloud (served) on 15; four of them
    random samples of confident answers (3 right); traffic of 1,000 requests at the edge, 100
    escalated."""
    ledger = ReviewLedger()
    for n in range(20):
        truth = n % 10
        edge = truth if n < 8 else (truth + 1) % 10
        cloud = truth if n < 15 else (truth + 2) % 10
        reason = ReviewReason.SAMPLE if n in (0, 1, 2, 19) else ReviewReason.UNSURE
        answers = (
            ReviewAnswer("edge", "edge-0", "e1", edge, 0.4),
            ReviewAnswer("cloud", "cloud-0", "c1", cloud, 0.6, served=True),
        )
        it = item(n, answers=answers, reason=reason)
        ledger.add(it, n + 1)
        ledger.record(label(it.id, truth, 100 + n))
    skipped = item(99)
    ledger.add(skipped, 99)
    ledger.record(label(skipped.id, None, 200))
    traffic = TrafficLedger()
    for report in (
        TrafficReport("edge-0", "edge", True, "site", "digits", "e1", 1.0, 400, 40, NOON - 60),
        TrafficReport("edge-0", "edge", True, "site", "digits", "e1", 1.0, 1000, 100, NOON),
        TrafficReport("edge-0", "edge", True, "site", "digits", "e1", 1.0, 900, 90, NOON - 30),
        TrafficReport("cloud-0", "cloud", False, "hub", "digits", "c1", 1.0, 100, 0, NOON),
    ):
        traffic.add(report)
    return ledger, traffic


def test_accuracy_per_version_and_tier_with_its_wilson_interval() -> None:
    ledger, traffic = labelled_set()
    stats = {(v.tier, v.version): v for v in version_stats(ledger, traffic)}
    edge, cloud = stats[("edge", "e1")], stats[("cloud", "c1")]
    assert (edge.accuracy.hits, edge.accuracy.total) == (8, 20)
    assert (cloud.accuracy.hits, cloud.accuracy.total) == (15, 20)
    # 8/20 = 0.40 with a 95% Wilson interval of [0.219, 0.613]
    assert edge.accuracy.low == pytest.approx(0.2188, abs=1e-3)
    assert edge.accuracy.high == pytest.approx(0.6134, abs=1e-3)
    # the late report (900 at NOON - 30) came after 1000 and is ignored
    assert (edge.requests, edge.escalated) == (1000, 100)
    assert edge.escalation_rate == pytest.approx(0.1)
    assert edge.labels_per_1000 == pytest.approx(20.0)
    assert cloud.labels_per_1000 == pytest.approx(200.0)


def test_a_node_restarting_its_version_restarts_its_totals_without_losing_them() -> None:
    traffic = TrafficLedger()
    for since, total, at in ((1.0, 50, NOON - 9), (1.0, 80, NOON - 8), (2.0, 30, NOON)):
        traffic.add(TrafficReport("e0", "edge", True, "s", "digits", "v", since, total, 0, at))
    assert traffic.totals("digits", "v", "edge") == (110, 0)


def test_the_daily_report_on_a_known_labelled_set() -> None:
    ledger, traffic = labelled_set()
    cost = CostModel(wrong_answer=10.0, escalation=0.5, human_label=2.0, unit="EUR")
    days = daily_report(ledger, traffic, cost, days=2, now=NOON)
    assert [d.day for d in days] == ["2026-03-01", "2026-03-02"]
    yesterday, today = days
    assert yesterday.requests == 0 and yesterday.labels == 0
    figures: dict[str, Any] = today.figures()
    assert figures["requests"] == 1000 and figures["escalations"] == 100
    assert figures["queued"] == 21 and figures["labels"] == 20 and figures["skips"] == 1
    assert figures["served_accuracy"]["hits"] == 15 and figures["served_accuracy"]["total"] == 20
    # the samples: items 0, 1, 2 (served right) and 19 (served wrong): 3 of 4
    assert figures["sampled_accuracy"]["value"] == 0.75
    low = Share(3, 4).low
    assert low is not None and low == pytest.approx(0.3006, abs=1e-3)
    assert figures["errors"] == {
        "found": 5, "estimated": 250.0, "estimated_high": round((1 - low) * 1000, 1),
        "from": "sample",
    }  # fmt: skip
    # 250 wrong x 10 + 100 escalations x 0.5 + 20 labels x 2
    assert figures["cost"]["total"] == 2500 + 50 + 40
    assert figures["cost"]["per_1000_requests"] == 2590.0
    assert figures["productivity"]["answers_per_label"] == 50.0
    assert figures["productivity"]["human_share"] == 0.02


def test_without_samples_the_errors_found_are_what_is_costed() -> None:
    ledger = ReviewLedger()
    it = item(1)
    ledger.add(it, 1)
    ledger.record(label(it.id, 9, 5))  # the cloud served 5: wrong
    figures: dict[str, Any] = daily_report(ledger, TrafficLedger(), CostModel(), days=1, now=NOON)[
        0
    ].figures()
    assert figures["errors"]["from"] == "found" and figures["errors"]["found"] == 1
    assert figures["cost"]["errors"] == 10.0


def test_a_share_without_samples_has_no_interval() -> None:
    assert Share(0, 0).value is None and Share(0, 0).low is None
    assert Share(3, 3).high == 1.0
