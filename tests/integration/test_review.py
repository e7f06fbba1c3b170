"""The review queue against real servers with real credentials (issue 28, part one): a hub
(domain ``hub``) and a site (domain ``site``), provisioned by the administrator, tier nodes
offering candidates, the intake and the desk each with its own identity, and reviewers, the
console and applications calling the review API as themselves.

Each reason reaches the queue once; the limits hold; an item whose residency keeps its input
below the hub says so and cannot be labelled; bad labels change nothing; a label is kept with
the ones it replaced and told to the application that asked, and to no other."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NATS

from mesh import MeshClient, wire
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import (
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from mesh.observability.metrics import default_metrics
from mesh.review.client import ReviewClient
from mesh.review.desk import ReviewDesk
from mesh.review.intake import ReviewIntake, StoreRequest, store_label
from mesh.review.records import LabelKind, ReviewLabel
from mesh.review.sampling import QueueLimits, WindowLimits
from mesh.review.truth import CostModel
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role, inbox_prefix
from mesh.settings import EventSettings, HardExampleSettings, ReviewFeedSettings
from mesh.topology import parameters, subjects
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.site import LinkedSite

pytestmark = pytest.mark.timeout(180)

DESK = IdentitySpec("review-desk", Role.REVIEW_DESK)
INTAKE = IdentitySpec("review-intake", Role.REVIEW_INTAKE)
ALICE = IdentitySpec("alice", Role.REVIEWER)
CONSOLE = IdentitySpec("console", Role.CONSOLE)
APP = IdentitySpec("app", Role.APPLICATION)
OTHER = IdentitySpec("other-app", Role.APPLICATION)

#: never confident: every answer is unsure (confidence is at most 1).
UNSURE = 1.01
#: every candidate offered, none held back by the node's own bound.
OFFER_ALL = ReviewFeedSettings(sample_rate=0.0, drift_rate=0.0, max_per_minute=10_000)


@dataclass
class Review:
    """The review service of a test (desk and intake, each its own identity) and callers."""

    linked: LinkedSite
    keystore: KeyStore
    desk: ReviewDesk | None = None
    intake: ReviewIntake | None = None
    desk_nc: NATS | None = None
    opened: list[NATS] = field(default_factory=list)

    async def connect(self, spec: IdentitySpec, url: str | None = None, **options: Any) -> NATS:
        creds = await asyncio.to_thread(self.keystore.ensure, spec)
        nc = NATS()
        await nc.connect(
            url or self.linked.hub_url,
            user_credentials=str(creds),
            inbox_prefix=inbox_prefix(spec.name),
            allow_reconnect=False,
            **options,
        )
        self.opened.append(nc)
        return nc

    async def start(self, limits: WindowLimits | None = None) -> None:
        self.desk_nc = await self.connect(DESK)
        self.desk = ReviewDesk(
            self.desk_nc, cost=CostModel(), metrics=default_metrics(), domain="hub"
        )
        await self.desk.start()
        self.intake = ReviewIntake(
            await self.connect(INTAKE),
            limits=QueueLimits(limits or WindowLimits(per_minute=10_000)),
            metrics=default_metrics(),
            domain="hub",
        )
        await self.intake.start()

    async def client(self, spec: IdentitySpec) -> ReviewClient:
        """A caller of the review API as ``spec``, connected at the site as a person would."""
        holder: list[ReviewClient] = []

        async def on_error(exc: Exception) -> None:
            for client in holder:
                await client.on_error(exc)

        nc = await self.connect(spec, self.linked.leaf_url, error_cb=on_error)
        holder.append(ReviewClient(nc, spec.name))
        return holder[0]

    async def app(self, spec: IdentitySpec = APP) -> MeshClient:
        creds = await asyncio.to_thread(self.keystore.ensure, spec)
        client = await MeshClient.connect(self.linked.leaf_url, user_credentials=str(creds))
        self.opened.append(client.nc)
        return client

    async def items(
        self, done: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 20.0, **query: Any
    ) -> list[dict[str, Any]]:
        """Every item (any status) matching ``query``, once ``done`` says they are all there."""
        alice = await self.client(ALICE)
        deadline = time.monotonic() + timeout
        while True:
            found = await alice.list(status="all", limit=1000, **query)
            items: list[dict[str, Any]] = found["items"]
            if done(items) or time.monotonic() > deadline:
                return items
            await asyncio.sleep(0.2)

    async def ask(self, app: MeshClient, x: np.ndarray[Any, Any], n: int) -> list[str]:
        """The first ``n`` rows of ``x`` sent by ``app`` asking a person to look (request ids
        ``ask-<i>``); their items' ids, in that order."""
        for i in range(n):
            await app.infer("digits", x[i : i + 1], request_id=f"ask-{i}", human_review="always")
        items = await self.items(lambda found: len(found) >= n)
        by_request = {item["request_id"]: item["id"] for item in items}
        return [by_request[f"ask-{i}"] for i in range(n)]

    async def close(self) -> None:
        for part in (self.intake, self.desk):
            if part is not None:
                await part.stop()
        for nc in self.opened:
            if not nc.is_closed:
                await nc.close()


@pytest.fixture
async def review(provisioned: LinkedSite, keystore: KeyStore) -> AsyncIterator[Review]:
    rig = Review(provisioned, keystore)
    try:
        yield rig
    finally:
        await rig.close()


def rows(demo: DemoArtifacts) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    split = np.load(demo.test)
    return split["x"].astype(np.float32), split["y"]


def candidates(tier: str, reason: str, outcome: str = "offered") -> float:
    return default_metrics().review_candidates.value(tier, "digits", reason, outcome)


async def start_sure_edge(review: Review, chain: Chain, feed: ReviewFeedSettings) -> MeshClient:
    """An edge node sure of every answer (none escalated, audited or novel) offering them to the
    review as ``feed`` says, the review service, and the application's client."""
    await chain.start(
        review.linked.leaf_url,
        Tier("edge", threshold=0.0, novelty=False, audit_rate=0.0, review=feed),
    )
    await review.start()
    return await review.app()


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.1)


# ---- what reaches the queue, once -----------------------------------------------------------


async def test_the_top_tiers_unsure_answer_is_queued_once_with_every_tiers_answer(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    linked = review.linked
    await chain.start(
        linked.leaf_url,
        Tier("edge", threshold=UNSURE, review=OFFER_ALL),
        Tier("gateway", threshold=UNSURE, review=OFFER_ALL),
        Tier("cloud", threshold=UNSURE, server=linked.hub_url, review=OFFER_ALL),
    )
    await review.start()
    x, _ = rows(demo)
    before = candidates("cloud", "unsure")
    duplicates = candidates("cloud", "unsure", "duplicate")
    app = await review.app()
    answer = await app.infer("digits", x[:1], request_id="q-1", budget_ms=5000)
    assert answer.tier == "cloud"
    refused = await app.infer("digits", x[1:2], request_id="q-2", human_review="never")
    assert refused.tier == "cloud"
    await app.infer("digits", x[:1], request_id="q-1", budget_ms=5000)  # the same request again
    await until(lambda: candidates("cloud", "unsure", "duplicate") - duplicates >= 1)

    items = await review.items(lambda found: len(found) >= 1)
    assert [item["request_id"] for item in items] == ["q-1"]
    [item] = items
    assert item["reason"] == "unsure" and item["caller"] == "app"
    assert "top tier (cloud) was unsure" in item["why"]
    assert [a["tier"] for a in item["answers"]] == ["edge", "gateway", "cloud"]
    served = [a for a in item["answers"] if a["served"]]
    assert [(a["tier"], a["label"]) for a in served] == [("cloud", answer.label)]
    assert all(a["version"] and a["confidence"] is not None for a in item["answers"])
    assert item["site"] == "" and item["withheld"] is None and item["status"] == "pending"
    # offered once (the second copy is dropped as such); the refused one never
    assert candidates("cloud", "unsure") - before == 1
    shown = await (await review.client(ALICE)).show(item["id"])
    assert shown["input"]["input"]["shape"] == [1, 64]
    assert np.allclose(shown["input"]["input"]["data"], x[0])

    # a client's own word on who asked and what the tiers answered is dropped at the entry
    forged = wire.InferRequest(
        "q-3", "digits", {"input": x[2:3]}, 5000.0, parameters={
            parameters.CALLER: "victim",
            parameters.ANSWERS: '[["edge","edge-9","v9",[1],0.99]]',
        },
    )  # fmt: skip
    reply = await app.nc.request(subjects.entry("digits"), wire.encode_request(forged), timeout=5)
    assert isinstance(wire.decode_reply(reply.data), wire.InferResponse)
    items = await review.items(lambda found: len(found) >= 2)
    [third] = [i for i in items if i["request_id"] == "q-3"]
    assert third["caller"] == "app"
    nodes = [(a["tier"], a["node"]) for a in item["answers"]]
    assert [(a["tier"], a["node"]) for a in third["answers"]] == nodes  # no edge-9


async def test_an_item_whose_residency_keeps_its_input_below_the_hub_says_so_and_cannot_be_labelled(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(
        review.linked.leaf_url,
        Tier("edge", threshold=UNSURE, review=OFFER_ALL),
        Tier("gateway", threshold=UNSURE, review=OFFER_ALL),
    )
    await review.start()
    x, _ = rows(demo)
    app = await review.app()
    answer = await app.infer("digits", x[:1], residency="device", request_id="kept-home")
    assert answer.tier == "edge" and answer.reason == "residency"
    [item] = await review.items(lambda found: len(found) >= 1)
    assert item["reason"] == "unsure" and item["withheld"] == "residency device"
    assert "residency device keeps the input from the tier above" in item["why"]
    alice = await review.client(ALICE)
    shown = await alice.show(item["id"])
    assert shown["input"] is None and shown["withheld"] == "residency device"
    with pytest.raises(InvalidArgumentError, match="cannot be labelled from here"):
        await alice.label(item["id"], 3)
    assert (await alice.show(item["id"]))["history"] == []
    skipped = await alice.skip(item["id"])
    assert skipped["status"] == "skipped" and skipped["label"]["by"] == "alice"
    assert (await alice.list())["total"] == 0


async def test_each_disagreement_an_audit_finds_is_queued_once(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(
        review.linked.leaf_url,
        Tier("edge", threshold=0.0, novelty=False, audit_rate=1.0, review=OFFER_ALL),
        Tier("gateway", review=OFFER_ALL),
    )
    await review.start()
    x, _ = rows(demo)
    app = await review.app()
    picked = x[:200]
    # one at a time: an audit skipped for too many in flight would compare nothing
    edge = [
        await app.infer("digits", picked[i : i + 1], request_id=f"a-{i}")
        for i in range(len(picked))
    ]
    above = await asyncio.gather(
        *(app.infer("digits", picked[i : i + 1], tier="gateway") for i in range(len(picked)))
    )
    assert all(r.tier == "edge" for r in edge)
    expected = {f"a-{i}" for i in range(len(picked)) if edge[i].label != above[i].label}
    assert expected, "the edge and the gateway agree on every row: pick other rows"
    items = await review.items(lambda found: len(found) >= len(expected), reason="disagreement")
    await asyncio.sleep(1.0)  # any second copy would be in by now
    items = await review.items(lambda found: True, reason="disagreement")
    assert sorted(i["request_id"] for i in items) == sorted(expected)
    for item in items:
        edge_answer, gateway_answer = item["answers"]
        assert (edge_answer["tier"], edge_answer["served"]) == ("edge", True)
        assert gateway_answer["tier"] == "gateway" and not gateway_answer["served"]
        assert edge_answer["label"] != gateway_answer["label"]


async def test_a_hard_example_delivered_to_the_hub_is_queued_once(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    linked = review.linked
    await chain.start(
        linked.leaf_url,
        Tier(
            "gateway", entry=True, threshold=UNSURE, upstream="cloud", upstream_zone="cloud",
            upstream_timeout_ms=500, review=OFFER_ALL,
        ),
    )  # fmt: skip
    await review.start()
    x, _ = rows(demo)
    app = await review.app()
    answer = await app.infer("digits", x[:1], request_id="hard-1", budget_ms=3000)
    assert answer.degraded and answer.tier == "gateway"
    asked = await app.infer(
        "digits", x[1:2], request_id="hard-2", budget_ms=3000, human_review="always"
    )
    assert asked.degraded
    # the cloud comes up at the hub and takes the case up from the site
    await chain.start(
        linked.hub_url,
        Tier(
            "cloud", review=OFFER_ALL,
            hard_examples=HardExampleSettings(collect_from="gateway", collect_domains=["site"]),
        ),
    )  # fmt: skip
    items = await review.items(lambda found: len(found) >= 2)
    by_request = {item["request_id"]: item for item in items}
    item = by_request["hard-1"]
    assert item["reason"] == "hard_example" and item["tier"] == "gateway"
    assert item["caller"] == "app" and item["detail"]["degraded"] == "no_responders"
    [served] = [a for a in item["answers"] if a["served"]]
    assert (served["tier"], served["label"]) == ("gateway", answer.label)
    # the request the caller asked a person for was queued by the gateway when it answered;
    # the same case delivered to the hub later is the same item, and the queue keeps one
    assert by_request["hard-2"]["reason"] == "requested"
    intake = review.intake
    assert intake is not None
    await until(lambda: intake.counts.get("duplicate", 0) >= 1)
    assert sorted(i["request_id"] for i in await review.items(lambda found: True)) == [
        "hard-1",
        "hard-2",
    ]


async def test_confident_answers_are_sampled_within_the_nodes_bound_and_requested_ones_beyond_it(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    sampling = ReviewFeedSettings(sample_rate=1.0, drift_rate=0.0, max_per_minute=5)
    app = await start_sure_edge(review, chain, sampling)
    x, _ = rows(demo)
    for i in range(12):
        await app.infer("digits", x[i : i + 1], request_id=f"s-{i}")
    for i in range(3):
        await app.infer("digits", x[i : i + 1], request_id=f"asked-{i}", human_review="always")
    items = await review.items(lambda found: len(found) >= 8)
    by_reason: dict[str, list[str]] = {}
    for item in items:
        by_reason.setdefault(item["reason"], []).append(item["request_id"])
    assert sorted(by_reason["sample"]) == [f"s-{i}" for i in range(5)]
    assert sorted(by_reason["requested"]) == [f"asked-{i}" for i in range(3)]
    assert set(by_reason) == {"sample", "requested"}
    requested = next(i for i in items if i["reason"] == "requested")
    assert requested["human_review"] == "always"


async def test_the_hubs_limit_per_model_holds(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(review.linked.leaf_url, Tier("edge", threshold=UNSURE, review=OFFER_ALL))
    await review.start(WindowLimits(per_minute=3))
    x, _ = rows(demo)
    app = await review.app()
    for i in range(10):
        await app.infer("digits", x[i : i + 1], request_id=f"l-{i}")
    intake = review.intake
    assert intake is not None
    await until(lambda: intake.counts.get("queued", 0) + intake.counts.get("over_limit", 0) >= 10)
    assert (intake.counts.get("queued"), intake.counts.get("over_limit")) == (3, 7)
    assert len(await review.items(lambda found: len(found) >= 3)) == 3


async def test_inputs_seen_while_the_model_drifts_are_queued_and_not_before(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    drifting = ReviewFeedSettings(sample_rate=0.0, drift_rate=1.0, max_per_minute=10_000)
    [edge] = await chain.start(
        review.linked.leaf_url,
        Tier("edge", threshold=0.0, novelty=False, audit_rate=0.0, review=drifting),
    )
    await review.start()
    x, _ = rows(demo)
    app = await review.app()
    await asyncio.gather(*(app.infer("digits", x[i : i + 1]) for i in range(150)))
    await asyncio.sleep(1.5)
    assert await review.items(lambda found: False, timeout=0.5) == []
    bright = np.clip(x[150:350] * 1.3 + 0.1, 0.0, 1.0).astype(np.float32)
    await asyncio.gather(*(app.infer("digits", bright[i : i + 1]) for i in range(len(bright))))
    feed = edge.review
    assert feed is not None
    await until(lambda: feed.drifting("digits") is not None)
    for i in range(5):
        await app.infer("digits", bright[i : i + 1], request_id=f"d-{i}")
    items = await review.items(
        lambda found: {f"d-{i}" for i in range(5)} <= {f["request_id"] for f in found}
    )
    drifted = [i for i in items if i["request_id"].startswith("d-")]
    assert {i["reason"] for i in drifted} == {"drift"}
    assert all(i["detail"]["psi"] > 0.25 for i in drifted)


# ---- labels ------------------------------------------------------------------------------------


async def requested_items(review: Review, chain: Chain, demo: DemoArtifacts, n: int) -> list[str]:
    """``n`` items the application asked a person to look at, by request id ``ask-<i>``."""
    app = await start_sure_edge(review, chain, OFFER_ALL)
    x, _ = rows(demo)
    return await review.ask(app, x, n)


async def test_bad_labels_get_typed_errors_and_change_nothing(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    first, second = await requested_items(review, chain, demo, 2)
    alice = await review.client(ALICE)
    with pytest.raises(NotFoundError, match="no review item"):
        await alice.label("r000000000000000000000000", 3)
    with pytest.raises(InvalidArgumentError, match="not among digits's labels"):
        await alice.label(first, 10)
    with pytest.raises(InvalidArgumentError, match="not among"):
        await alice.label(first, "seven")
    with pytest.raises(InvalidArgumentError):
        await alice.call("label", {"id": "not a token", "label": 1})
    assert (await alice.show(first))["history"] == []
    labelled = await alice.label(first, 3)
    assert labelled["status"] == "labelled" and labelled["label"]["label"] == 3
    with pytest.raises(InvalidArgumentError, match="labelled already"):
        await alice.label(first, 4)
    with pytest.raises(InvalidArgumentError, match="labelled already"):
        await alice.skip(first)
    assert [h["label"] for h in (await alice.show(first))["history"]] == [3]

    # two people labelling at once: the intake stores the first only
    desk_nc = review.desk_nc
    assert desk_nc is not None
    record = ReviewLabel(second, "digits", LabelKind.LABEL, 5, "5", "bob", time.time())
    await store_label(desk_nc, StoreRequest(record, 0, None, "ask-1"))
    with pytest.raises(InvalidArgumentError, match="someone else"):
        await store_label(desk_nc, StoreRequest(record, 0, None, "ask-1"))

    # only a reviewer labels; the console reads; an application does neither
    console = await review.client(CONSOLE)
    assert (await console.list(status="all"))["total"] == 2
    for caller in (console, await review.client(APP)):
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError, match="may not label"):
            await caller.label(first, 7, relabel=True)
        assert time.monotonic() - started < caller.timeout  # refused, not timed out
    with pytest.raises(PermissionDeniedError):
        await (await review.client(APP)).list()
    assert (await alice.show(first))["label"]["label"] == 3


async def test_a_label_is_kept_with_the_ones_it_replaced_and_told_to_the_caller_only(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    [item] = await requested_items(review, chain, demo, 1)
    alice = await review.client(ALICE)
    assert (await alice.list())["total"] == 1
    await alice.label(item, 3)
    assert (await alice.list())["total"] == 0  # it left the queue
    relabelled = await alice.label(item, "4", relabel=True)
    assert relabelled["label"]["relabel"] and relabelled["told"]
    history = (await alice.show(item))["history"]
    assert [(h["label"], h["by"], h["relabel"]) for h in history] == [
        (3, "alice", False),
        (4, "alice", True),
    ]
    assert history[0]["revision"] < history[1]["revision"]

    app = await review.app()
    told = []
    async with asyncio.timeout(20):
        async for event in app.labels("digits", source="app"):
            told.append((event.request_id, event.label, event.by, event.relabel))
            if len(told) == 2:
                break
    assert told == [("ask-0", 3, "alice", False), ("ask-0", 4, "alice", True)]
    other = await review.app(OTHER)
    with pytest.raises(MeshError):
        async with asyncio.timeout(15):
            async for _ in other.labels("digits", source="app"):
                break


async def test_an_events_label_is_told_to_its_source_by_event_id(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(
        review.linked.leaf_url,
        Tier(
            "edge", threshold=0.0, novelty=False, audit_rate=0.0, review=OFFER_ALL,
            events=EventSettings(enabled=True),
        ),
    )  # fmt: skip
    await review.start()
    x, _ = rows(demo)
    app = await review.app()
    ack = await app.publish("digits", x[:1], source="app", event_id="ev-1", human_review="always")
    assert ack.event_id == "ev-1"
    [item] = await review.items(lambda found: len(found) >= 1)
    assert (item["request_id"], item["caller"], item["reason"]) == ("ev-1", "app", "requested")
    await (await review.client(ALICE)).label(item["id"], 8)
    async with asyncio.timeout(20):
        async for event in app.labels("digits", source="app"):
            assert (event.request_id, event.label) == ("ev-1", 8)
            break


async def test_stats_give_the_labelled_accuracy_of_each_tiers_version(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    ids = await requested_items(review, chain, demo, 4)
    alice = await review.client(ALICE)
    items = {i["id"]: i for i in (await alice.list(limit=10))["items"]}
    served = [items[i]["answers"][-1]["label"] for i in ids]
    # the person agrees with the edge on three and not on the fourth
    for item, label in zip(ids, [*served[:3], (served[3] + 1) % 10], strict=True):
        await alice.label(item, label)
    stats = await alice.stats(model="digits")
    [edge] = [v for v in stats["versions"] if v["tier"] == "edge"]
    assert (edge["labelled"], edge["correct"]) == (4, 3)
    assert edge["accuracy"]["low"] < 0.75 < edge["accuracy"]["high"]
    assert stats["queue"]["digits"]["by_status"] == {"labelled": 4}
    report = await alice.report(model="digits", days=1)
    [today] = report["days"]
    assert today["labels"] == 4 and today["errors"]["found"] == 1


async def test_the_review_commands_print_json_and_one_line_errors(
    review: Review, chain: Chain, demo: DemoArtifacts
) -> None:
    [item] = await requested_items(review, chain, demo, 1)
    creds = await asyncio.to_thread(review.keystore.ensure, ALICE)
    base = ["--servers", review.linked.leaf_url, "--creds", str(creds)]

    async def mesh(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mesh.cli", "review", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await mesh("list", "--json", *base)
    assert code == 0, err
    [listed] = json.loads(out)
    assert listed["id"] == item and {"id", "model", "reason", "answers"} <= set(listed)
    code, out, err = await mesh("label", item, "11", *base)
    assert (
        code == 2 and err.strip().startswith("error: INVALID_ARGUMENT") and "\n" not in err.strip()
    )
    code, out, err = await mesh("label", item, "2", "--json", *base)
    assert code == 0 and json.loads(out)["label"]["label"] == 2
    code, out, err = await mesh("report", "--json", "--days", "1", *base)
    assert code == 0 and json.loads(out)["days"][0]["labels"] == 1


async def test_concurrent_calls_of_one_client_each_get_their_own_answer(review: Review) -> None:
    # the console serves several people at once through one client: calls on one subject overlap
    console = await review.client(CONSOLE)
    with pytest.raises(UnavailableError):
        await console.list()  # no desk yet: every call answered at once
    answers = await asyncio.gather(*(console.list() for _ in range(6)), return_exceptions=True)
    assert all(isinstance(a, UnavailableError) for a in answers), answers
    await review.start()
    listed = await asyncio.gather(*(console.list(status="all") for _ in range(6)))
    assert [found["total"] for found in listed] == [0] * 6
    app = await review.client(APP)
    refused = await asyncio.gather(*(app.list() for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, PermissionDeniedError) for r in refused), refused
