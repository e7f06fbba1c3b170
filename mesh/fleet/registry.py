"""The fleet's registry on JetStream: model artifacts, desired state and heartbeats.

Layout (the README's "Fleet" section draws it):

- hub domain: Object Store ``MESH_MODELS`` holding ``<model>/<version>/onnx``, ``.../manifest``
  and ``.../signature``; KV ``MESH_FLEET_DESIRED`` (``<model>.<selector>`` to an assignment);
  KV ``MESH_FLEET_NODES`` (node name to its latest heartbeats), which *sources* the heartbeat
  bucket of every domain through a subject transform.
- every domain (the hub's and each site's): KV ``MESH_NODES_<DOMAIN>`` where that domain's nodes
  write their heartbeats, so a site cut off from the hub keeps them and the hub takes them in
  when the link returns.
- every site domain: mirrors of ``MESH_MODELS`` and ``MESH_FLEET_DESIRED``, so the site's nodes
  watch and fetch from their own server while the hub is out of reach.

Versions are immutable: pushing a version that exists with other bytes or another manifest is
refused. Its signature alone may be replaced, by one the caller checked against the keys the
nodes trust (a version signed with the wrong key, re-signed). Nothing here decides anything;
the agent and the CLI do. The buckets and stores themselves are the
topology's (``mesh.topology.streams``), made by the provisioning step.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    NoKeysError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from mesh.errors import InvalidArgumentError, MeshError, UnavailableError
from mesh.errors import NotFoundError as MeshNotFound
from mesh.fleet.desired import DesiredState, Revisioned, decode_desired, encode_desired
from mesh.fleet.refusals import RetryRequest, encode_retry, is_retry_key
from mesh.fleet.replay import next_stamp
from mesh.fleet.revocation import Revocation, decode_revocation, encode_revocation
from mesh.fleet.signing import ArtifactSignature
from mesh.topology import subjects
from mesh.topology.streams import (
    DESIRED_BUCKET,
    MODEL_STORE,
    MODEL_STORE_STREAM,
    NODES_BUCKET,
    REVOKED_BUCKET,
)
from mesh.topology.subjects import kv_stream, object_chunks, object_meta
from mesh.transport.jetstream import require_bucket
from mesh.wire import NodeStatus, decode_node_status

#: parts of one version in the object store.
PARTS = ("onnx", "manifest", "signature")
#: largest artifact a node fetches, by default.
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024


def object_name(model: str, version: str, part: str) -> str:
    return f"{model}/{version}/{part}"


class IncompleteObjectError(UnavailableError):
    """An object's chunks do not (yet) add up to what its meta says: a site's mirror still
    copying it. Worth trying again; the bytes a signature covers are checked after."""


# --- artifacts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One version as stored: the ONNX bytes, the manifest (bytes and parsed) and signature."""

    onnx: bytes
    manifest_bytes: bytes
    signature_bytes: bytes

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.manifest_bytes)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgumentError("the stored manifest is not JSON") from None
        if not isinstance(obj, dict):
            raise InvalidArgumentError("the stored manifest is not a JSON object")
        return obj

    @property
    def signature(self) -> ArtifactSignature:
        return ArtifactSignature.from_json(self.signature_bytes)


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: str
    size: int
    sha256: str
    signer: str
    tier_hint: str
    profile: dict[str, Any]
    quality: dict[str, Any]


async def _store(js: JetStreamContext) -> Any:
    try:
        return await js.object_store(MODEL_STORE)
    except BucketNotFoundError:
        raise MeshNotFound(
            f"no model store {MODEL_STORE} in this JetStream domain: run mesh fleet init"
        ) from None


class Pushed(StrEnum):
    """What a push did."""

    STORED = "stored"
    UNCHANGED = "unchanged"
    RESIGNED = "re-signed"


async def push(js: JetStreamContext, artifact: Artifact, *, resign: bool = False) -> str:
    """``store`` a signed version; returns ``model@version``."""
    await store(js, artifact, resign=resign)
    manifest = artifact.manifest
    return f"{manifest.get('name')}@{manifest.get('version')}"


async def store(js: JetStreamContext, artifact: Artifact, *, resign: bool = False) -> Pushed:
    """Store a signed version (already verified by the caller).

    The parts go in the order onnx, manifest, signature: a version counts as present once its
    signature is, and a node fetches only versions someone assigned after that. A version in
    the store already is accepted again when identical; with the same bytes and manifest but
    another signature, its signature is replaced when ``resign`` says the caller checked the
    new one against the trusted keys, and refused otherwise; with other bytes or another
    manifest, refused."""
    manifest = artifact.manifest
    model, version = str(manifest.get("name")), str(manifest.get("version"))
    objects = await _store(js)
    try:
        existing: bytes | None = await read_object(js, object_name(model, version, "signature"))
    except MeshNotFound:
        existing = None
    if existing is not None:
        if existing == artifact.signature_bytes:
            return Pushed.UNCHANGED
        await _same_content(js, artifact, model, version, resign)
        await _replace_small_object(
            js, object_name(model, version, "signature"), artifact.signature_bytes
        )
        return Pushed.RESIGNED
    for part, data in zip(
        PARTS, (artifact.onnx, artifact.manifest_bytes, artifact.signature_bytes), strict=True
    ):
        await objects.put(object_name(model, version, part), data)
    return Pushed.STORED


async def _same_content(
    js: JetStreamContext, artifact: Artifact, model: str, version: str, resign: bool
) -> None:
    """Refuse a push of a stored version unless only its signature differs and may change."""
    label = f"{model}@{version}"
    stored = await read_object(js, object_name(model, version, "manifest"))
    try:
        same_manifest = json.loads(stored) == artifact.manifest
    except ValueError:
        same_manifest = False
    meta = await _object_meta(js, object_name(model, version, "onnx"))
    digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(artifact.onnx).digest()).decode()
    same_bytes = _digest_text(meta.digest) == digest.rstrip("=")
    if not (same_manifest and same_bytes):
        what = "bytes" if not same_bytes else "manifest"
        raise InvalidArgumentError(
            f"{label} is already in the registry with another {what}: versions are immutable, "
            "push it under a new version (mesh models bump makes one)"
        )
    if not resign:
        raise InvalidArgumentError(
            f"{label} is already in the registry with the same bytes and manifest under another "
            "signature: versions are immutable, but a signature may be replaced by one the nodes "
            "trust; push again with their keys (--trusted-key or $MESH_TRUSTED_KEYS)"
        )


async def _replace_small_object(js: JetStreamContext, name: str, data: bytes) -> None:
    """Write ``data`` as object ``name``, one chunk and its meta, as nats-py's ``put`` does, but
    leaving the chunk it replaces: removing that is a purge, a JetStream administrator's verb
    the controller may not use (a signature is a few hundred bytes)."""
    nuid = uuid.uuid4().hex
    await js.publish(object_chunks(MODEL_STORE, nuid), data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    info = api.ObjectInfo(
        name=name,
        bucket=MODEL_STORE,
        nuid=nuid,
        size=len(data),
        chunks=1,
        mtime=datetime.now(UTC).isoformat(),
        digest=f"SHA-256={digest}",
        options=api.ObjectMetaOptions(max_chunk_size=max(len(data), 1)),
    )
    await js.publish(
        object_meta(MODEL_STORE, name),
        json.dumps(info.as_dict()).encode(),
        headers={api.Header.ROLLUP: "sub"},
    )


def _digest_text(digest: str | None) -> str:
    return (digest or "").replace("sha-256=", "SHA-256=").rstrip("=")


async def list_versions(js: JetStreamContext) -> list[VersionInfo]:
    metas = await _object_metas(js)
    names = {name for name, info in metas.items() if not info.deleted}
    out: list[VersionInfo] = []
    for name in sorted(names):
        model, _, rest = name.partition("/")
        version, _, part = rest.partition("/")
        if part != "signature" or object_name(model, version, "manifest") not in names:
            continue
        try:
            manifest = json.loads(await read_object(js, object_name(model, version, "manifest")))
            signature = ArtifactSignature.from_json(await read_object(js, name))
        except (ValueError, MeshError):
            continue  # a broken version is not listed; fetching it names what is wrong
        onnx = metas.get(object_name(model, version, "onnx"))
        out.append(
            VersionInfo(
                model=model,
                version=version,
                size=int(onnx.size or 0) if onnx is not None else 0,
                sha256=signature.sha256,
                signer=signature.key,
                tier_hint=str(manifest.get("tier_hint", "")),
                profile=dict(manifest.get("profile") or {}),
                quality=dict(manifest.get("quality") or {}),
            )
        )
    return out


async def _object_metas(js: JetStreamContext) -> dict[str, api.ObjectInfo]:
    """The meta record of every object, by name. Like ``read_object``, with the stream named,
    so that it works on a mirror and with the rights of a reader of this one stream."""
    stream = MODEL_STORE_STREAM
    await _store(js)
    info = await js.stream_info(stream)
    if not info.state.messages:
        return {}
    sub = await js.subscribe(
        object_meta(MODEL_STORE),
        stream=stream,
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT),
    )
    metas: dict[str, api.ObjectInfo] = {}
    try:
        async with asyncio.timeout(30):
            async for msg in sub.messages:
                try:
                    meta = api.ObjectInfo.from_response(json.loads(msg.data))
                except Exception:  # malformed meta: skipped, as nats-py's own listing would
                    meta = None
                if meta is not None and meta.name:
                    metas[meta.name] = meta
                if msg.metadata.num_pending == 0:
                    break
    except TimeoutError:
        raise UnavailableError("listing the model store took over 30 s") from None
    finally:
        await sub.unsubscribe()
    return metas


async def _object_meta(js: JetStreamContext, name: str) -> api.ObjectInfo:
    """One object's meta record (its size and digest)."""
    try:
        msg = await js.get_last_msg(MODEL_STORE_STREAM, object_meta(MODEL_STORE, name))
    except NotFoundError:
        raise MeshNotFound(f"object {name} is not in {MODEL_STORE}") from None
    try:
        info: api.ObjectInfo = api.ObjectInfo.from_response(json.loads(msg.data or b""))
    except Exception:  # nats-py raises assorted types on a malformed meta record
        raise InvalidArgumentError(f"object {name} has malformed meta") from None
    if info.deleted:
        raise MeshNotFound(f"object {name} was deleted from {MODEL_STORE}")
    return info


async def has_version(js: JetStreamContext, model: str, version: str) -> bool:
    try:
        await read_object(js, object_name(model, version, "signature"), max_bytes=1 << 20)
    except MeshNotFound:
        return False
    return True


async def read_object(
    js: JetStreamContext, name: str, *, max_bytes: int = MAX_ARTIFACT_BYTES, timeout: float = 30.0
) -> bytes:
    """One object's bytes, checked against its size and digest.

    Written here rather than taken from nats-py's ``ObjectStore.get``: that looks its stream up
    by subject, which a mirror (a site's copy of the store) does not have, and it buffers an
    object of any size. Raises ``NotFoundError`` (missing), ``InvalidArgumentError`` (too big,
    or corrupt meta), ``IncompleteObjectError`` (its chunks do not add up to its meta yet) or
    ``UnavailableError`` (no answer in ``timeout``)."""
    stream = MODEL_STORE_STREAM
    try:
        async with asyncio.timeout(timeout):
            info = await _object_meta(js, name)
            size = int(info.size or 0)
            if size > max_bytes:
                raise InvalidArgumentError(
                    f"object {name} is {size} bytes, over the limit of {max_bytes}"
                )
            if size == 0:
                return b""
            return await _read_chunks(js, stream, name, info, size)
    except TimeoutError:
        raise UnavailableError(f"object {name} not read within {timeout:.0f} s") from None
    except (NatsTimeoutError, ServiceUnavailableError) as exc:
        raise UnavailableError(f"object {name}: JetStream did not answer ({exc!r})") from None


async def _read_chunks(
    js: JetStreamContext, stream: str, name: str, info: api.ObjectInfo, size: int
) -> bytes:
    chunk_subject = object_chunks(MODEL_STORE, str(info.nuid))
    sub = await js.subscribe(chunk_subject, stream=stream, ordered_consumer=True)
    data = bytearray()
    try:
        async for msg in sub.messages:
            data += msg.data
            if len(data) > size:
                break
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    if len(data) != size or digest.rstrip("=") != _digest_text(info.digest):
        raise IncompleteObjectError(
            f"object {name} is not complete here yet: {len(data)} of {size} bytes"
            + ("" if len(data) != size else ", digest does not match its meta")
        )
    return bytes(data)


async def fetch(
    js: JetStreamContext, model: str, version: str, *, max_bytes: int = MAX_ARTIFACT_BYTES
) -> Artifact:
    """The three parts of ``model@version`` from the store of ``js``'s domain."""
    parts = [
        await read_object(js, object_name(model, version, part), max_bytes=max_bytes)
        for part in ("signature", "manifest", "onnx")
    ]
    return Artifact(onnx=parts[2], manifest_bytes=parts[1], signature_bytes=parts[0])


# --- desired state and heartbeats -----------------------------------------------------------


async def desired_bucket(js: JetStreamContext) -> KeyValue:
    return await require_bucket(js, DESIRED_BUCKET, "desired-state")


#: the header that makes a KV entry a delete marker (nats-py's ``KV_OP``).
KV_OPERATION = "KV-Operation"


async def newest_time(js: JetStreamContext, key: str) -> float | None:
    """The newest ``time`` among the entries the desired-state bucket holds under ``key``
    (withdrawals included), None when it holds none."""
    bucket = await desired_bucket(js)
    try:
        entries = await bucket.history(key)
    except NoKeysError:
        return None
    times: list[float] = []
    for entry in entries:
        try:
            times.append(decode_desired(entry.value or b"").time)
        except InvalidArgumentError:
            continue
    return max(times, default=None)


async def assign(js: JetStreamContext, state: DesiredState) -> DesiredState:
    """Write ``state`` under its key, stamped after the newest entry there (readers ignore an
    entry older than one they have seen: ``mesh.fleet.replay``); returns what was written."""
    bucket = await desired_bucket(js)
    stamped = replace(state, time=next_stamp(state.time, await newest_time(js, state.key)))
    await bucket.put(stamped.key, encode_desired(stamped))
    return stamped


async def withdraw(js: JetStreamContext, withdrawal: DesiredState) -> None:
    """Remove an assignment: a delete marker whose body is the withdrawal (``DesiredState``
    with ``withdrawn``), so readers can tell it from one re-delivered under another key."""
    await desired_bucket(js)
    await js.publish(
        subjects.kv(DESIRED_BUCKET, withdrawal.key),
        encode_desired(withdrawal),
        headers={KV_OPERATION: "DEL"},
    )


async def request_retry(js: JetStreamContext, request: RetryRequest) -> int:
    """Ask the nodes (``mesh.fleet.refusals``) to clear their refusal of a version."""
    kv = await desired_bucket(js)
    return int(await kv.put(request.key, encode_retry(request)))


async def read_desired(js: JetStreamContext) -> list[Revisioned]:
    bucket = await desired_bucket(js)
    out: list[Revisioned] = []
    for entry in await latest_entries(js, bucket, DESIRED_BUCKET):
        if is_retry_key(entry.key):
            continue
        try:
            state = decode_desired(entry.value or b"")
        except InvalidArgumentError:
            continue
        if state.key == entry.key and not state.withdrawn:
            out.append(Revisioned(state, int(entry.revision or 0)))
    return out


async def revoked_bucket(js: JetStreamContext) -> KeyValue:
    return await require_bucket(js, REVOKED_BUCKET, "revocation")


async def put_revocation(js: JetStreamContext, revocation: Revocation) -> None:
    bucket = await revoked_bucket(js)
    await bucket.put(revocation.bucket_key, encode_revocation(revocation))


async def read_revocations(js: JetStreamContext) -> dict[str, Revocation]:
    """``model@version`` to its revocation, as stored (the caller verifies the signatures)."""
    bucket = await revoked_bucket(js)
    out: dict[str, Revocation] = {}
    for entry in await latest_entries(js, bucket, REVOKED_BUCKET):
        try:
            revocation = decode_revocation(entry.value or b"")
        except InvalidArgumentError:
            continue
        if revocation.bucket_key == entry.key:
            out[revocation.target] = revocation
    return out


async def read_heartbeats(js: JetStreamContext) -> dict[str, NodeStatus | str]:
    """Node name to its latest heartbeat, or to why it could not be read."""
    kv = await require_bucket(js, NODES_BUCKET, "heartbeat")
    out: dict[str, NodeStatus | str] = {}
    for entry in await latest_entries(js, kv, NODES_BUCKET):
        try:
            status = decode_node_status(entry.value or b"")
        except InvalidArgumentError as exc:
            out[entry.key] = exc.message
            continue
        # another node's beat re-delivered under this key is not this node's
        out[entry.key] = (
            status
            if status.node == entry.key
            else f"a heartbeat of {status.node[:64]!r} under key {entry.key!r}"
        )
    return out


#: gets in flight at once when a whole bucket is read.
READ_CONCURRENCY = 32


async def stream_last_seq(js: JetStreamContext, bucket: str) -> int:
    """The sequence of the last message in ``bucket``'s stream, 0 when it holds none."""
    state = (await js.stream_info(kv_stream(bucket))).state
    return int(state.last_seq or 0) if state.messages else 0


async def latest_entries(
    js: JetStreamContext, kv: KeyValue, bucket: str, keys: str = ">"
) -> list[KeyValue.Entry]:
    """The latest value of every key of ``bucket`` matching ``keys`` (deleted keys left out).

    The keys come from the stream's per-subject counts and each is read with a get. A KV watch
    is not a snapshot: nats-py marks its initial values done when its consumer reports nothing
    pending, which can come before what the server already pushed, and a key rewritten while
    the watch starts is delivered after the marker (a reader saw no node, or some missing)."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(kv_stream(bucket), subjects_filter=prefix + keys)
    names = sorted(s.removeprefix(prefix) for s in info.state.subjects or {})
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def get(key: str) -> KeyValue.Entry | None:
        async with limit:
            try:
                return await kv.get(key)
            except KeyNotFoundError:  # deleted or purged
                return None

    return [e for e in await asyncio.gather(*(get(k) for k in names)) if e is not None]
