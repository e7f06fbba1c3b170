"""The review API's messages: JSON requests and replies on ``mesh.review.api.<op>.<caller>``
(the console and ``mesh review`` call it), typed errors as the NATS micro services API writes
them, and the views of items and labels it answers with. Pure.

A reply is ``{"result": ...}``; an error is ``{"error": {"code", "message"}}`` with the
``Nats-Service-Error`` and ``Nats-Service-Error-Code`` headers (the code as HTTP status).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mesh.errors import HTTP_STATUS, InternalError, InvalidArgumentError, MeshError, error_for
from mesh.review.ledger import Entry, Status
from mesh.review.records import ReviewItem, ReviewLabel, ReviewReason
from mesh.topology.headers import SERVICE_ERROR, SERVICE_ERROR_CODE
from mesh.topology.subjects import check_token

#: most items one ``list`` returns.
MAX_LIST = 1000
#: most days one ``report`` covers.
MAX_DAYS = 90
#: largest request body the API reads.
MAX_BODY = 64 * 1024


class ReviewApi(Protocol):
    """What a caller asks of the review API, each answer a plain dict as the API gives it and
    each failure one of the mesh's typed errors (``mesh.review.client.ReviewClient`` is one):
    the console and the learn job's export take it."""

    async def list(
        self,
        *,
        model: str | None = None,
        reason: str | None = None,
        status: str = "pending",
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]: ...

    async def show(self, item: str) -> dict[str, Any]: ...

    async def label(
        self, item: str, label: int | str, *, relabel: bool = False
    ) -> dict[str, Any]: ...

    async def skip(self, item: str) -> dict[str, Any]: ...

    async def stats(self, *, model: str | None = None) -> dict[str, Any]: ...

    async def report(self, *, model: str | None = None, days: int = 7) -> dict[str, Any]: ...


def encode_result(result: object) -> bytes:
    return json.dumps({"result": result}, allow_nan=False, separators=(",", ":")).encode()


def encode_error(error: MeshError) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"error": {"code": error.code.value, "message": error.message}}).encode()
    headers = {
        SERVICE_ERROR: error.message[:512].replace("\r", " ").replace("\n", " "),
        SERVICE_ERROR_CODE: str(HTTP_STATUS[error.code]),
    }
    return body, headers


def decode_reply(data: bytes) -> Any:
    """The result of a reply, or the typed error it carries."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise InternalError(
            f"the review API replied with something not JSON: {data[:80]!r}"
        ) from None
    if not isinstance(obj, dict):
        raise InternalError("the review API replied with something not an object")
    error = obj.get("error")
    if isinstance(error, dict):
        raise error_for(str(error.get("code", "")), str(error.get("message", "")))
    return obj.get("result")


def parse_body(data: bytes) -> dict[str, Any]:
    """A request's body: a JSON object (empty means ``{}``)."""
    if len(data) > MAX_BODY:
        raise InvalidArgumentError(f"a review API request is at most {MAX_BODY} bytes")
    if not data.strip():
        return {}
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise InvalidArgumentError(f"the request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidArgumentError("the request must be a JSON object")
    return obj


# --- what a request asks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    model: str | None = None
    reason: ReviewReason | None = None
    #: None: every status.
    status: Status | None = Status.PENDING
    limit: int = 50
    #: items to pass over first (the next page starts after the last one read).
    offset: int = 0


def list_query(body: dict[str, Any]) -> ListQuery:
    model = _optional_token(body.get("model"), "model")
    reason = body.get("reason")
    status = body.get("status", Status.PENDING.value)
    limit = body.get("limit", 50)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIST}")
    offset = body.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidArgumentError("offset must be a whole number, 0 or more")
    try:
        return ListQuery(
            model=model,
            reason=None if reason is None else ReviewReason(reason),
            status=None if status in (None, "all") else Status(status),
            limit=limit,
            offset=offset,
        )
    except ValueError as exc:
        raise InvalidArgumentError(
            f"{exc}: reason is one of {[r.value for r in ReviewReason]}, status one of "
            f"{[s.value for s in Status]} or 'all'"
        ) from None


def item_of(body: dict[str, Any]) -> str:
    value = body.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError("name the item: {'id': ...}")
    try:
        return check_token(value, "review item id")
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def label_request(body: dict[str, Any]) -> tuple[str, object, bool]:
    """The item, the class given (an id or a name) and whether it replaces a label."""
    if "label" not in body:
        raise InvalidArgumentError("give the class: {'id': ..., 'label': <class id or name>}")
    relabel = body.get("relabel", False)
    if not isinstance(relabel, bool):
        raise InvalidArgumentError("relabel must be true or false")
    return item_of(body), body["label"], relabel


def resolve_class(value: object, item: ReviewItem) -> tuple[int, str | None]:
    """The class id and name of a label for ``item``, or a typed error naming the choices."""
    classes = item.classes
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int):
        if classes and not 0 <= value < len(classes):
            raise InvalidArgumentError(
                f"class {value} is not among {item.model}'s labels: 0 to {len(classes) - 1} "
                f"({_some(classes)})"
            )
        if value < 0:
            raise InvalidArgumentError(f"class {value} is not a class id")
        return value, classes[value] if classes else None
    if isinstance(value, str) and value in classes:
        return classes.index(value), value
    raise InvalidArgumentError(
        f"{str(value)[:40]!r} is not among {item.model}'s labels ({_some(classes)})"
    )


def _some(classes: tuple[str, ...]) -> str:
    if not classes:
        return "class ids"
    shown = ", ".join(f"{i}={name}" for i, name in enumerate(classes[:12]))
    return shown + (", ..." if len(classes) > 12 else "")


def _optional_token(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string")
    try:
        return check_token(value, what)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


# --- views -------------------------------------------------------------------------------------


def label_view(label: ReviewLabel) -> dict[str, Any]:
    return {
        "kind": label.kind.value,
        "label": label.label,
        "name": label.name,
        "by": label.by,
        "at": label.at,
        "relabel": label.relabel,
        "revision": label.revision,
    }


def item_view(entry: Entry, full: ReviewItem | None = None) -> dict[str, Any]:
    """An item as the API and ``mesh review list --json`` give it (``id``, ``model``,
    ``reason`` and ``answers`` are a contract); ``full`` adds the input and the history."""
    item = entry.item
    classes = item.classes
    current = entry.current
    view: dict[str, Any] = {
        "id": item.id,
        "model": item.model,
        "reason": item.reason.value,
        "why": item.why,
        "status": entry.status.value,
        "answers": [
            {
                "tier": a.tier,
                "node": a.node,
                "version": a.version,
                "label": a.label,
                "class": classes[a.label]
                if a.label is not None and 0 <= a.label < len(classes)
                else None,
                "confidence": None if a.confidence is None else round(a.confidence, 4),
                "served": a.served,
            }
            for a in item.answers
        ],
        "tier": item.tier,
        "node": item.node,
        "site": item.site,
        "zone": item.zone,
        "created_at": item.created_at,
        "queued_at": item.queued_at,
        "request_id": item.request_id,
        "caller": item.caller,
        "human_review": item.human_review.value,
        "residency": item.residency,
        "withheld": item.withheld,
        "row": item.row,
        "rows": item.rows,
        "trace_id": item.trace_id,
        "detail": item.detail,
        "label": label_view(current) if current is not None else None,
    }
    if full is not None:
        view["classes"] = list(classes)
        view["history"] = [label_view(record) for record in entry.labels]
        view["input"] = (
            None
            if full.inputs is None
            else {name: _tensor_view(array) for name, array in full.inputs.items()}
        )
    return view


def _tensor_view(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    flat = array.reshape(-1).tolist()
    data = [None if isinstance(x, float) and not math.isfinite(x) else x for x in flat]
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


__all__ = [
    "MAX_LIST",
    "ListQuery",
    "ReviewApi",
    "decode_reply",
    "encode_error",
    "encode_result",
    "item_of",
    "item_view",
    "label_request",
    "label_view",
    "list_query",
    "parse_body",
    "resolve_class",
]
