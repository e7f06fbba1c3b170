"""The labelled items of a model, with their inputs and provenance, for retraining anywhere.

An export is two files: ``<name>.npz`` with ``x`` (the inputs, one row an item; ``x_<input>``
per input for a model of several), ``y`` (the class each person gave) and ``item`` (the item
ids), and ``<name>.json``: the model, its classes, when and by whom the export was made, how
many items were passed over and why (input withheld for residency, aged out of the queue), and
per row its provenance: the item, the request, why it was queued, every tier's answer, the
label with who and when, and how many labels it had.

``export_labelled`` reads them through the review API (``list`` then ``show``, as a reviewer's
tool would); the rest is pure.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from mesh.errors import InvalidArgumentError, MeshError
from mesh.review.api import MAX_LIST, ReviewApi

#: the format of the provenance file.
EXPORT_FORMAT = "mesh-labelled-export/1"


class ReviewReader(ReviewApi, Protocol):
    """What an export needs of the review API: its calls, and the identity it calls as."""

    name: str


@dataclass(frozen=True)
class LabelledSet:
    """Labelled rows of one model: inputs by name (one row an item), classes, provenance."""

    model: str
    classes: list[str]
    inputs: dict[str, npt.NDArray[Any]]
    y: npt.NDArray[np.int64]
    provenance: list[dict[str, Any]]
    #: items passed over, by why.
    passed_over: dict[str, int] = field(default_factory=dict)
    exported_at: float = 0.0
    by: str = ""

    def __len__(self) -> int:
        return len(self.y)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(str(p.get("reason")) for p in self.provenance))

    def take(self, rows: Sequence[int]) -> LabelledSet:
        index = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            inputs={name: array[index] for name, array in self.inputs.items()},
            y=self.y[index],
            provenance=[self.provenance[i] for i in index.tolist()],
        )


def row_of(view: Mapping[str, Any]) -> tuple[dict[str, npt.NDArray[Any]], int, dict[str, Any]]:
    """One item as ``show`` gives it: its input arrays, its class and its provenance; a
    ``ValueError`` naming why it cannot be a row (no input, no label)."""
    label = view.get("label")
    if not isinstance(label, dict) or label.get("kind") != "label":
        raise ValueError("not labelled")
    raw = view.get("input")
    if not isinstance(raw, dict) or not raw:
        raise ValueError("withheld" if view.get("withheld") else "aged out")
    inputs: dict[str, npt.NDArray[Any]] = {}
    for name, tensor in raw.items():
        data = [np.nan if v is None else v for v in tensor["data"]]
        array = np.asarray(data, dtype=np.dtype(tensor["dtype"])).reshape(tensor["shape"])
        inputs[str(name)] = array if array.ndim and array.shape[0] == 1 else array[None, ...]
    history = view.get("history") or []
    provenance = {
        "item": view.get("id"),
        "request_id": view.get("request_id"),
        "reason": view.get("reason"),
        "why": view.get("why"),
        "label": label.get("label"),
        "class": label.get("name"),
        "labelled_by": label.get("by"),
        "labelled_at": label.get("at"),
        "relabelled": bool(label.get("relabel")),
        "labels": len(history),
        "answers": view.get("answers") or [],
        "tier": view.get("tier"),
        "node": view.get("node"),
        "site": view.get("site"),
        "zone": view.get("zone"),
        "created_at": view.get("created_at"),
        "queued_at": view.get("queued_at"),
        "trace_id": view.get("trace_id"),
        "caller": view.get("caller"),
    }
    return inputs, int(label["label"]), provenance


def build_set(
    model: str, views: Sequence[Mapping[str, Any]], *, by: str = "", now: float | None = None
) -> LabelledSet:
    """The labelled set of ``views`` (items as ``show`` gives them); what cannot be a row is
    counted by why. Items of another input signature than the first are refused."""
    rows: list[dict[str, npt.NDArray[Any]]] = []
    labels: list[int] = []
    provenance: list[dict[str, Any]] = []
    passed: Counter[str] = Counter()
    classes: list[str] = []
    for view in views:
        try:
            inputs, label, origin = row_of(view)
        except (ValueError, KeyError, TypeError) as exc:
            passed[str(exc) if isinstance(exc, ValueError) else "unreadable"] += 1
            continue
        if rows and _signature(inputs) != _signature(rows[0]):
            passed["another input shape"] += 1
            continue
        classes = classes or [str(c) for c in view.get("classes") or []]
        rows.append(inputs)
        labels.append(label)
        provenance.append(origin)
    names = list(rows[0]) if rows else []
    return LabelledSet(
        model=model,
        classes=classes,
        inputs={n: np.concatenate([r[n] for r in rows]) for n in names},
        y=np.asarray(labels, dtype=np.int64),
        provenance=provenance,
        passed_over=dict(passed),
        exported_at=time.time() if now is None else now,
        by=by,
    )


def _signature(inputs: Mapping[str, npt.NDArray[Any]]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(n, a.dtype.name, tuple(a.shape[1:])) for n, a in sorted(inputs.items())]


async def export_labelled(
    client: ReviewReader, model: str, *, limit: int | None = None
) -> LabelledSet:
    """Every labelled item of ``model`` (the oldest ``limit`` of them), read through the review
    API as the client's identity."""
    views: list[dict[str, Any]] = []
    offset = 0
    while limit is None or len(views) < limit:
        page = min(MAX_LIST, limit - len(views)) if limit is not None else MAX_LIST
        listed = await client.list(model=model, status="labelled", limit=page, offset=offset)
        items = listed.get("items") or []
        for item in items:
            try:
                views.append(await client.show(str(item["id"])))
            except MeshError:
                continue  # it aged out between the list and the show
        offset += len(items)
        if len(items) < page:
            break
    return build_set(model, views, by=client.name)


def input_digest(row: Mapping[str, npt.NDArray[Any]]) -> str:
    digest = hashlib.sha256()
    for name, array in sorted(row.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def split(labelled: LabelledSet, held_share: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Rows for the trainer and rows held back to calibrate what it makes, about ``held_share``
    of the distinct inputs held: an input labelled twice (one request sent twice) lands on one
    side only, so the calibration never scores a model on what it trained on."""
    if not 0.0 <= held_share < 1.0:
        raise InvalidArgumentError(f"the held-back share {held_share} must be in [0, 1)")
    digests = [
        input_digest({n: a[i] for n, a in labelled.inputs.items()}) for i in range(len(labelled))
    ]
    distinct = sorted(set(digests))
    random.Random(seed).shuffle(distinct)
    held = set(distinct[: round(held_share * len(distinct))])
    train = [i for i, d in enumerate(digests) if d not in held]
    return train, [i for i, d in enumerate(digests) if d in held]


def write_export(
    labelled: LabelledSet, npz: Path, *, note: Mapping[str, Any] | None = None
) -> Path:
    """Write ``npz`` and its provenance beside it (``.json``); returns the provenance path."""
    npz.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[Any]] = {"y": labelled.y}
    if len(labelled.inputs) == 1:
        arrays["x"] = next(iter(labelled.inputs.values()))
    else:
        arrays.update({f"x_{name}": a for name, a in labelled.inputs.items()})
    arrays["item"] = np.asarray([str(p.get("item")) for p in labelled.provenance], dtype=str)
    with npz.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    meta = {
        "format": EXPORT_FORMAT,
        "model": labelled.model,
        "classes": labelled.classes,
        "inputs": {
            n: {"dtype": a.dtype.name, "shape": list(a.shape[1:])}
            for n, a in labelled.inputs.items()
        },
        "rows": len(labelled),
        "by_reason": labelled.by_reason(),
        "by_class": {str(k): v for k, v in sorted(Counter(labelled.y.tolist()).items())},
        "passed_over": labelled.passed_over,
        "exported_at": labelled.exported_at,
        "exported_by": labelled.by,
        **dict(note or {}),
        "provenance": labelled.provenance,
    }
    path = npz.with_suffix(".json")
    path.write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
    return path


__all__ = [
    "EXPORT_FORMAT",
    "LabelledSet",
    "ReviewReader",
    "build_set",
    "export_labelled",
    "split",
    "write_export",
]
