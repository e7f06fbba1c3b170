"""When a node gives up on a version, and how it is asked to try again. Pure: no I/O.

A version whose parts are missing or not yet complete at the node's site (a mirror still
catching up: an object shorter than its meta says, or its digest not yet matching) is not a
refusal: the agent waits and tries again with a growing pause (``Waiting``). A refusal is final
for what the version is: a signature that does not verify, bytes whose hash is not the signed
one, a manifest that is not the model served, a device gate it fails. An operator clears a
refusal with ``mesh fleet retry``, which writes a ``RetryRequest`` into the desired-state
bucket (the controller's identity may write it, every agent reads it from its site's mirror);
a request written after the refusal clears it, so the node takes the version again if it is
still assigned.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.errors import InvalidArgumentError, MeshError, NotFoundError, UnavailableError
from mesh.fleet.desired import check_token
from mesh.wire.codec import VERSION, finite, packb, require, require_kind, unpack_map

KIND = "fleet_retry"
#: desired-state keys of retry requests start with this; a model name cannot hold ``=``, so
#: no assignment (``<model>.<selector>``) is ever mistaken for one.
RETRY_PREFIX = "retry="
#: the node part of the key of a request to every node.
EVERY_NODE = "all"
#: first pause before a version missing or incomplete at the site is tried again; it doubles
#: up to ``RETRY_MAX_S``.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 30.0


def transient(error: MeshError) -> bool:
    """Whether fetching a version failed for now only: its parts are missing or incomplete at
    this site, or the server did not answer. Anything else a version is refused for."""
    return isinstance(error, (NotFoundError, UnavailableError))


@dataclass(frozen=True)
class Waiting:
    """A version that could not be fetched yet, and when to try it again."""

    attempts: int
    #: when the first attempt failed, and the last (the agent's monotonic clock).
    since: float
    at: float
    due: float
    reason: str

    def after(self, now: float, reason: str) -> Waiting:
        """The next wait, after another failed attempt at ``now``."""
        return waiting(now, reason, attempts=self.attempts + 1, since=self.since)


def waiting(now: float, reason: str, *, attempts: int = 1, since: float | None = None) -> Waiting:
    pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
    return Waiting(attempts, now if since is None else since, now, now + pause, reason)


@dataclass(frozen=True)
class RetryRequest:
    """``schemas/fleet-retry.schema.json``: clear a node's (or every node's) refusal of one
    version."""

    model: str
    version: str
    #: the node whose refusal is cleared; None for every node that refused it.
    node: str | None
    #: wall-clock unix seconds, for the record.
    time: float
    by: str = ""

    @property
    def key(self) -> str:
        return retry_key(self.model, self.node)

    def applies_to(self, node: str) -> bool:
        return self.node is None or self.node == node


def retry_key(model: str, node: str | None) -> str:
    """``retry=<node or all>.<model>``: one request per node and model, the latest kept."""
    target = EVERY_NODE if node is None else check_token(node, "node name")
    return f"{RETRY_PREFIX}{target}.{check_token(model, 'model name')}"


def is_retry_key(key: str) -> bool:
    return key.startswith(RETRY_PREFIX)


def encode_retry(request: RetryRequest) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": KIND,
            "model": request.model,
            "version": request.version,
            "node": request.node,
            "time": float(request.time),
            "by": request.by,
        }
    )


def decode_retry(data: bytes) -> RetryRequest:
    what = "retry request"
    obj = unpack_map(data, what)
    require_kind(obj, KIND, what)
    node = obj.get("node")
    if node is not None and not isinstance(node, str):
        raise InvalidArgumentError(f"{what} node must be a string or null")
    version = require(obj, "version", str, what)
    if not version or len(version) > 64:
        raise InvalidArgumentError(f"{what} version {version[:70]!r} is not a version name")
    by = obj.get("by", "")
    return RetryRequest(
        model=check_token(require(obj, "model", str, what), "model name"),
        version=version,
        node=None if node is None else check_token(node, "node name"),
        time=finite(require(obj, "time", (int, float), what), "time", what),
        by=by if isinstance(by, str) else "",
    )
