"""JetStream from the topology's specs: provisioning (an administrator's step), the lookups
runtime identities make, and the one way the mesh watches a KV bucket.

``provision`` creates or brings up to date every stream, bucket and store of the mesh's domains
(``mesh fleet init``, ``mesh up``); it needs the administrator's rights, and is the only place
that creates or updates a stream. ``require_stream`` is what a node does instead at start: look
its streams up and say, naming the stream and the domain, when the provisioning step did not run.
``watch_bucket`` follows every key of a bucket for as long as it runs (the fleet agent, the
controller), re-watching after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from mesh.errors import InvalidArgumentError, NotFoundError, UnavailableError
from mesh.topology.streams import (
    BucketSpec,
    Discard,
    MeshTopology,
    ObjectStoreSpec,
    Retention,
    Source,
    Spec,
    StreamSpec,
)
from mesh.topology.subjects import kv_stream

log = logging.getLogger("mesh.jetstream")

#: what JetStream answers while it starts up or elects a leader: retried.
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
)
#: a stream of that name exists with another configuration.
STREAM_NAME_IN_USE = 10058
#: a clustered JetStream cannot place a replicated stream yet: a member is down or has not
#: joined (R3 needs two of three up); it clears once the member is back, so it is retried.
NO_PLACEMENT = (10005, 10023)
#: replicas asked of a JetStream that is not clustered.
NOT_CLUSTERED = 10074


def _placement_pending(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) or (
        isinstance(exc, nats.js.errors.APIError) and exc.err_code in NO_PLACEMENT
    )


def _source(source: Source) -> api.StreamSource:
    external = None if source.domain is None else api.ExternalStream(api=f"$JS.{source.domain}.API")
    return api.StreamSource(
        name=source.stream,
        external=external,
        subject_transforms=(
            None
            if source.transform is None
            else [api.SubjectTransform(src=source.transform[0], dest=source.transform[1])]
        ),
    )


def stream_config(spec: StreamSpec) -> api.StreamConfig:
    """nats-py's configuration of ``spec``."""
    return api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects) or None,
        retention=(
            api.RetentionPolicy.WORK_QUEUE
            if spec.retention is Retention.WORK_QUEUE
            else api.RetentionPolicy.LIMITS
        ),
        discard=api.DiscardPolicy.NEW if spec.discard is Discard.NEW else api.DiscardPolicy.OLD,
        discard_new_per_subject=spec.discard_new_per_subject,
        max_bytes=spec.max_bytes,
        max_age=spec.max_age_s,
        max_msg_size=spec.max_msg_size,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        duplicate_window=spec.duplicate_window_s,
        storage=api.StorageType.FILE,
        num_replicas=spec.replicas,
        mirror=None if spec.mirror is None else _source(spec.mirror),
        sources=[_source(s) for s in spec.sources] or None,
        deny_delete=spec.protected,
        deny_purge=spec.protected,
    )


async def _retrying(timeout: float, *, placement: bool = False) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(_placement_pending)
        if placement
        else retry_if_exception_type(TRANSIENT),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
        stop=stop_after_delay(timeout),
        reraise=True,
    )


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    """Create the stream, or bring an existing one's configuration up to ``config``."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        await js.update_stream(config)


async def _ensure_bucket(js: JetStreamContext, spec: BucketSpec) -> None:
    try:
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=spec.bucket,
                description=spec.description,
                history=spec.history,
                replicas=spec.replicas,
            )
        )
    except nats.js.errors.BadRequestError as exc:
        # made before with other settings (fewer replicas, before the hub was clustered):
        # brought up to date below
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    info = await js.stream_info(spec.stream)
    config = info.config
    changed = _replicas_changed(config, spec.replicas)
    if config.max_msgs_per_subject != spec.history:
        config.max_msgs_per_subject = spec.history
        changed = True
    known = {s.name for s in config.sources or []}
    added = [_source(s) for s in spec.sources if s.stream not in known]
    if added:
        config.sources = [*(config.sources or []), *added]
        changed = True
    if changed:
        await js.update_stream(config)


def _replicas_changed(config: api.StreamConfig, replicas: int) -> bool:
    """Set ``config``'s replicas to ``replicas``; whether that changed them."""
    if (config.num_replicas or 1) == replicas:
        return False
    config.num_replicas = replicas
    return True


async def _ensure_store(js: JetStreamContext, spec: ObjectStoreSpec) -> None:
    try:
        await js.object_store(spec.store)
    except nats.js.errors.BucketNotFoundError:
        # nats-py sets the config's bucket from its own argument, so both are given
        await js.create_object_store(
            spec.store,
            config=api.ObjectStoreConfig(
                bucket=spec.store, description=spec.description, replicas=spec.replicas
            ),
        )
        return
    config = (await js.stream_info(spec.stream)).config
    if _replicas_changed(config, spec.replicas):
        await js.update_stream(config)


async def ensure(js: JetStreamContext, spec: Spec, timeout: float = 15.0) -> None:
    """Create ``spec`` in ``js``'s domain or bring it up to date (the administrator's rights);
    retried while JetStream starts up, or a clustered one cannot place its replicas yet."""
    try:
        async for attempt in await _retrying(timeout, placement=spec.replicas > 1):
            with attempt:
                if isinstance(spec, StreamSpec):
                    await ensure_stream(js, stream_config(spec))
                elif isinstance(spec, BucketSpec):
                    await _ensure_bucket(js, spec)
                else:
                    await _ensure_store(js, spec)
    except nats.js.errors.APIError as exc:
        if exc.err_code == NOT_CLUSTERED:
            raise InvalidArgumentError(
                f"{_name(spec)}: {spec.replicas} replicas asked of a JetStream that is not "
                "clustered (provision with one replica, or run the hub as a cluster)"
            ) from None
        if exc.err_code in NO_PLACEMENT:
            raise UnavailableError(
                f"{_name(spec)}: JetStream could not place {spec.replicas} replicas within "
                f"{timeout:.0f}s ({exc.description}): are enough of the hub's servers up?"
            ) from None
        raise


async def provision(
    jetstream: Callable[[str], JetStreamContext], topology: MeshTopology, timeout: float = 15.0
) -> list[str]:
    """Every stream, bucket and store of every domain of ``topology``; ``jetstream(domain)``
    gives a context for a domain (through a server of it, or the hub's). Idempotent. Returns
    what it made, as ``domain/stream`` lines."""
    made: list[str] = []
    for domain in topology.domains():
        js = jetstream(domain)
        for spec in topology.plan(domain):
            await ensure(js, spec, timeout)
            made.append(f"{domain}/{_name(spec)}")
    return made


def _name(spec: Spec) -> str:
    return spec.name if isinstance(spec, StreamSpec) else spec.stream


async def require_stream(
    js: JetStreamContext, stream: str, *, domain: str | None, timeout: float = 10.0
) -> api.StreamInfo:
    """Look ``stream`` up in ``domain`` (None: the connected server's); a stream the
    provisioning step did not make is a ``NotFoundError`` naming it and the step to run."""
    where = f"JetStream domain {domain}" if domain else "this server's JetStream domain"
    try:
        async for attempt in await _retrying(timeout):
            with attempt:
                return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise NotFoundError(
            f"stream {stream} does not exist in {where}: an administrator provisions the "
            "mesh's streams with `mesh fleet init` (mesh up does it itself)"
        ) from None
    except TRANSIENT as exc:
        raise UnavailableError(f"JetStream in {where} did not answer: {exc!r}") from None
    raise AssertionError("unreachable: AsyncRetrying reraises")


async def require_bucket(js: JetStreamContext, bucket: str, what: str) -> KeyValue:
    """The KV bucket ``bucket`` (it holds ``what``); one the provisioning step did not make is a
    ``NotFoundError`` naming it and the step to run."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        raise NotFoundError(
            f"no {what} bucket {bucket} in this domain: run mesh fleet init"
        ) from None


#: longest a watch waits past nats-py's initial-values marker for an entry saying it is caught up.
SYNC_WAIT_S = 10.0


@dataclass(frozen=True)
class BucketEntry:
    """One entry of a KV bucket as a watch delivers it."""

    key: str
    #: the value; a delete or purge marker's body (empty unless its writer gave one).
    value: bytes
    revision: int
    #: a delete or purge marker.
    deleted: bool


async def watch_bucket(
    js: JetStreamContext,
    bucket: str,
    on_entry: Callable[[BucketEntry], None],
    *,
    history: bool = False,
    synced: asyncio.Event | None = None,
    retry_s: float = 1.0,
    who: str = "",
) -> None:
    """Deliver every entry of ``bucket`` to ``on_entry`` (each key's latest, or with ``history``
    every entry it still holds, oldest first), then every new one, until cancelled. ``synced``
    is set once the entries there were at the start are in: nats-py's marker of the initial
    values can come before them, so it is an entry with nothing pending behind it that says so
    (or the marker on an empty bucket, or ``SYNC_WAIT_S`` after it). A failure, or a bucket not
    provisioned yet, is logged and the watch starts again after ``retry_s``."""
    while True:
        try:
            kv = await js.key_value(bucket)
            info = await js.stream_info(kv_stream(bucket))
            empty = not info.state.messages
            watcher = await kv.watchall(include_history=history)
            try:
                async for entry in watcher:
                    if entry is None:
                        if synced is not None and empty:
                            synced.set()
                        elif synced is not None and not synced.is_set():
                            asyncio.get_running_loop().call_later(SYNC_WAIT_S, synced.set)
                        continue
                    _deliver(on_entry, entry, bucket, who)
                    if synced is not None and entry.delta == 0:
                        synced.set()
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            raise
        except nats.js.errors.BucketNotFoundError:
            log.info("%s: no bucket %s in this domain yet", who or "watch", bucket)
        except Exception as exc:
            log.warning("%s: watch of %s stopped: %r", who or "watch", bucket, exc)
        await asyncio.sleep(retry_s)


def _deliver(
    on_entry: Callable[[BucketEntry], None], entry: KeyValue.Entry, bucket: str, who: str
) -> None:
    try:
        on_entry(
            BucketEntry(
                key=entry.key,
                value=entry.value or b"",
                revision=int(entry.revision or 0),
                deleted=entry.operation is not None,
            )
        )
    except Exception:  # one entry's handler failing must not end the watch
        log.exception("%s: an entry of %s was not taken", who or "watch", bucket)


async def consume(
    sub: JetStreamContext.PullSubscription,
    batch: int,
    take: Callable[[Msg], Awaitable[None]],
    what: str,
) -> None:
    """Fetch ``sub``'s messages in batches of up to ``batch`` and ``take`` each, until
    cancelled; then unsubscribe. A consumer that takes up others' records must outlive any one
    failure: a failed fetch is retried, and a message whose ``take`` failed is not acknowledged,
    so it is redelivered."""
    try:
        while True:
            try:
                messages = await sub.fetch(batch, timeout=1.0)
            except TimeoutError:
                continue
            except TRANSIENT:
                await asyncio.sleep(0.5)
                continue
            except Exception:
                log.exception("fetching %s failed; retrying", what)
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                try:
                    await take(msg)
                except Exception:
                    log.exception("taking up %s failed; it will be redelivered", what)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


__all__ = [
    "SYNC_WAIT_S",
    "TRANSIENT",
    "BucketEntry",
    "consume",
    "ensure",
    "ensure_stream",
    "provision",
    "require_bucket",
    "require_stream",
    "stream_config",
    "watch_bucket",
]
