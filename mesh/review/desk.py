"""The review queue's desk, at the hub: reads the queue, the labels and the nodes' traffic, and
answers the review API (``mesh.review.api.<op>.<caller>``) for ``mesh review``, the console and
any reviewer's tool.

It has an identity of its own (role ``review-desk``) that reads what the intake and the nodes
write and writes nothing to JetStream: a label is checked here (the item exists, holds its
input, the class is the model's, no label is replaced unasked) and stored by the intake, with the
revision read here as the expected last one. The caller of the API is the identity its subject
names, which NATS lets no other identity publish as.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh.errors import InternalError, InvalidArgumentError, MeshError, NotFoundError
from mesh.lifecycle import Service
from mesh.observability.metrics import MeshMetrics
from mesh.review import api
from mesh.review.intake import StoreRequest, respond, store_label
from mesh.review.ledger import Entry, ReviewLedger, Status
from mesh.review.records import (
    LabelKind,
    ReviewItem,
    ReviewLabel,
    decode_item,
    decode_label,
    decode_traffic,
)
from mesh.review.truth import CostModel, TrafficLedger, daily_report, day_of, version_stats
from mesh.topology import subjects
from mesh.topology.streams import (
    REVIEW_LABELS_BUCKET,
    REVIEW_LABELS_STREAM,
    REVIEW_STREAM,
    REVIEW_TRAFFIC_STREAM,
)
from mesh.transport.jetstream import require_stream

log = logging.getLogger("mesh.review")

#: how long catching up with the queue at start may take before the desk gives up.
CATCH_UP_S = 120.0
KV_OPERATION = "KV-Operation"

Handler = Callable[[dict[str, Any], str], Awaitable[object]]
Store = Callable[[StoreRequest], Awaitable[dict[str, Any]]]


class ReviewDesk(Service):
    def __init__(
        self,
        nc: NATS,
        *,
        cost: CostModel,
        metrics: MeshMetrics,
        domain: str | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ReviewLedger()
        self.traffic = TrafficLedger()
        self.cost = cost
        self.domain = domain
        self._nc = nc
        self._js = nc.jetstream(domain=domain)
        self._metrics = metrics
        self._store = store or (lambda request: store_label(nc, request))
        self._clock = clock
        self._subs: list[Any] = []
        self._unregister: list[Callable[[], None]] = []
        self._handlers: dict[str, Handler] = {
            "list": self._list,
            "show": self._show,
            "label": self._label,
            "skip": self._skip,
            "stats": self._stats,
            "report": self._report,
        }

    async def _start(self) -> None:
        for stream in (REVIEW_STREAM, REVIEW_LABELS_STREAM, REVIEW_TRAFFIC_STREAM):
            await require_stream(self._js, stream, domain=self.domain)
        await self._follow(REVIEW_STREAM, subjects.REVIEW_QUEUE, self._on_item)
        await self._follow(
            REVIEW_LABELS_STREAM, subjects.kv(REVIEW_LABELS_BUCKET, ">"), self._on_label
        )
        await self._follow(REVIEW_TRAFFIC_STREAM, subjects.REVIEW_TRAFFIC, self._on_traffic)
        self._subs.append(
            await self._nc.subscribe(
                subjects.REVIEW_API, queue=subjects.REVIEW_QUEUE_GROUP, cb=self._on_request
            )
        )
        self._gauges()

    async def _stop(self) -> None:
        for unregister in self._unregister:
            unregister()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- following the streams --------------------------------------------------------------

    async def _follow(self, stream: str, subject: str, handle: Callable[[Msg, int], None]) -> None:
        """Read ``stream`` from its start and keep following it; returns once caught up."""
        info = await self._js.stream_info(stream)
        caught = asyncio.Event()
        if not info.state.messages:
            caught.set()

        async def on_message(msg: Msg) -> None:
            meta = msg.metadata
            try:
                handle(msg, meta.sequence.stream)
            except MeshError as exc:
                log.warning("skipping a malformed message in %s: %s", stream, exc.message)
            except Exception:
                log.exception("reading %s failed at %d", stream, meta.sequence.stream)
            if meta.num_pending == 0:
                caught.set()

        sub = await self._js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            cb=on_message,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        self._subs.append(sub)
        async with asyncio.timeout(CATCH_UP_S):
            await caught.wait()

    def _on_item(self, msg: Msg, sequence: int) -> None:
        self.ledger.add(decode_item(msg.data), sequence)

    def _on_label(self, msg: Msg, sequence: int) -> None:
        if msg.headers and msg.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
            return
        label = decode_label(msg.data, revision=sequence)
        if subjects.kv(REVIEW_LABELS_BUCKET, label.item) != msg.subject:
            raise InvalidArgumentError(f"a label of {label.item} stored under {msg.subject}")
        self.ledger.record(label)

    def _on_traffic(self, msg: Msg, sequence: int) -> None:
        report = decode_traffic(msg.data)
        if subjects.review_traffic(report.model, report.node) != msg.subject:
            raise InvalidArgumentError(f"totals of {report.node} published on {msg.subject}")
        self.traffic.add(report)

    # --- the API ----------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        operation, caller = (tokens[3], tokens[4]) if len(tokens) == 5 else ("", "")
        handler = self._handlers.get(operation)
        try:
            if handler is None:
                raise InvalidArgumentError(
                    f"the review API answers {sorted(self._handlers)}, not {operation[:40]!r}"
                )
            result = await handler(api.parse_body(msg.data), caller)
        except MeshError as error:
            body, headers = api.encode_error(error)
            await respond(self._nc, msg, body, headers)
            return
        except Exception as exc:
            log.exception("review API %s failed", operation)
            body, headers = api.encode_error(InternalError(f"{operation}: {exc!r}"))
            await respond(self._nc, msg, body, headers)
            return
        await respond(self._nc, msg, api.encode_result(result))

    async def _list(self, body: dict[str, Any], caller: str) -> object:
        query = api.list_query(body)
        entries, total = self.ledger.pending(
            query.model, query.reason, status=query.status, limit=query.limit, offset=query.offset
        )
        return {"items": [api.item_view(entry) for entry in entries], "total": total}

    async def _show(self, body: dict[str, Any], caller: str) -> object:
        entry = self._entry(api.item_of(body))
        return api.item_view(entry, await self._full(entry))

    async def _label(self, body: dict[str, Any], caller: str) -> object:
        item_id, value, relabel = api.label_request(body)
        entry = self._entry(item_id)
        item = entry.item
        if item.withheld is not None:
            raise InvalidArgumentError(
                f"item {item.id}'s input stayed where it was asked ({item.withheld}): it cannot "
                "be labelled from here; label it where the input is, or skip it"
            )
        label, name = api.resolve_class(value, item)
        current = entry.current
        if entry.status is Status.LABELLED and not relabel:
            assert current is not None
            raise InvalidArgumentError(
                f"item {item.id} is labelled already ({current.label}"
                f"{f' {current.name}' if current.name else ''} by {current.by}): relabel it "
                "explicitly to change it"
            )
        record = ReviewLabel(
            item=item.id,
            model=item.model,
            kind=LabelKind.LABEL,
            label=label,
            name=name,
            by=caller,
            at=self._clock(),
            relabel=entry.label is not None,
        )
        return await self._keep(entry, record)

    async def _skip(self, body: dict[str, Any], caller: str) -> object:
        entry = self._entry(api.item_of(body))
        if entry.status is Status.LABELLED:
            raise InvalidArgumentError(f"item {entry.id} is labelled already: nothing to skip")
        if entry.status is Status.SKIPPED:
            return api.item_view(entry)
        record = ReviewLabel(
            item=entry.id,
            model=entry.item.model,
            kind=LabelKind.SKIP,
            label=None,
            name=None,
            by=caller,
            at=self._clock(),
        )
        return await self._keep(entry, record)

    async def _keep(self, entry: Entry, record: ReviewLabel) -> object:
        item = entry.item
        request = StoreRequest(record, entry.revision, item.caller, item.request_id)
        stored = await self._store(request)
        revision = stored.get("revision")
        if not isinstance(revision, int):
            raise InternalError("the review intake stored the label but gave no revision")
        self.ledger.record(replace(record, revision=revision))
        view = api.item_view(entry)
        view["told"] = bool(stored.get("told"))
        return view

    async def _stats(self, body: dict[str, Any], caller: str) -> object:
        model = api.list_query({"model": body.get("model")}).model
        counts: dict[str, dict[str, Any]] = {}
        for entry in self.ledger:
            item = entry.item
            if model is not None and item.model != model:
                continue
            c = counts.setdefault(item.model, {"queued": 0, "by_reason": {}, "by_status": {}})
            c["queued"] += 1
            c["by_reason"][item.reason.value] = c["by_reason"].get(item.reason.value, 0) + 1
            c["by_status"][entry.status.value] = c["by_status"].get(entry.status.value, 0) + 1
        return {
            "queue": counts,
            "versions": [v.figures() for v in version_stats(self.ledger, self.traffic, model)],
        }

    async def _report(self, body: dict[str, Any], caller: str) -> object:
        model = api.list_query({"model": body.get("model")}).model
        days = body.get("days", 7)
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= api.MAX_DAYS:
            raise InvalidArgumentError(f"days must be an integer from 1 to {api.MAX_DAYS}")
        figures = daily_report(
            self.ledger, self.traffic, self.cost, days=days, now=self._clock(), model=model
        )
        cost = self.cost
        return {
            "cost_model": {
                "wrong_answer": cost.wrong_answer,
                "escalation": cost.escalation,
                "human_label": cost.human_label,
                "unit": cost.unit,
            },
            "days": [f.figures() for f in figures],
        }

    def _entry(self, item_id: str) -> Entry:
        entry = self.ledger.find(item_id)
        if entry is None:
            raise NotFoundError(f"no review item {item_id} (mesh review list shows the queue)")
        return entry

    async def _full(self, entry: Entry) -> ReviewItem | None:
        """The item with its input, read from the queue (None once it aged out)."""
        try:
            msg = await self._js.get_msg(REVIEW_STREAM, entry.sequence)
        except Exception as exc:
            log.info("item %s no longer in the queue: %r", entry.id, exc)
            return None
        return decode_item(msg.data or b"")

    # --- metrics ----------------------------------------------------------------------------

    def _gauges(self) -> None:
        observe = self._metrics.observe_gauge
        self._unregister += [
            observe(
                "mesh_review_items",
                "Review items at the hub by model, reason and status (pending, labelled, skipped)",
                self._item_values,
            ),
            observe(
                "mesh_review_accuracy",
                "Labelled accuracy of a model version at a tier, with its 95% Wilson bounds "
                "(bound: value, low, high)",
                self._accuracy_values,
            ),
            observe(
                "mesh_review_escalation_rate",
                "Share of a version's requests at a tier that escalated (nodes' running totals)",
                lambda: self._version_values("escalation_rate"),
            ),
            observe(
                "mesh_review_labels_per_1000",
                "Labelled items a version answered, per 1,000 requests it took at a tier",
                lambda: self._version_values("labels_per_1000"),
            ),
            observe(
                "mesh_review_cost_today",
                "Today's cost by kind (errors, escalations, labels, total), in the cost "
                "model's unit",
                self._cost_values,
            ),
        ]

    def _item_values(self) -> list[tuple[float, dict[str, str]]]:
        counts: dict[tuple[str, str, str], int] = {}
        for entry in self.ledger:
            key = (entry.item.model, entry.item.reason.value, entry.status.value)
            counts[key] = counts.get(key, 0) + 1
        return [
            (float(n), {"model": m, "reason": r, "status": s}) for (m, r, s), n in counts.items()
        ]

    def _accuracy_values(self) -> list[tuple[float, dict[str, str]]]:
        out = []
        for v in version_stats(self.ledger, self.traffic):
            share = v.accuracy
            for bound, value in (("value", share.value), ("low", share.low), ("high", share.high)):
                if value is not None:
                    labels = {"model": v.model, "version": v.version, "tier": v.tier}
                    out.append((value, {**labels, "bound": bound}))
        return out

    def _version_values(self, figure: str) -> list[tuple[float, dict[str, str]]]:
        out = []
        for v in version_stats(self.ledger, self.traffic):
            value = getattr(v, figure)
            if value is not None:
                out.append((float(value), {"model": v.model, "version": v.version, "tier": v.tier}))
        return out

    def _cost_values(self) -> list[tuple[float, dict[str, str]]]:
        out = []
        today = day_of(self._clock())
        for figures in daily_report(
            self.ledger, self.traffic, self.cost, days=1, now=self._clock()
        ):
            if figures.day != today:
                continue
            cost = figures.figures()["cost"]
            assert isinstance(cost, dict)
            for kind in ("errors", "escalations", "labels", "total"):
                value = cost.get(kind)
                if isinstance(value, int | float):
                    out.append((float(value), {"model": figures.model, "kind": kind}))
        return out


__all__ = ["ReviewDesk"]
