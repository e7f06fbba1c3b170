"""Revoked versions: a record, signed with the fleet's signing key, saying a version must not
serve (``schemas/revocation.schema.json``).

Revocations are kept in KV ``MESH_FLEET_REVOKED`` (the hub's, mirrored to every site) under
``<model>.<version>``; the controller writes them (``mesh models revoke``), nodes read them. A
node's agent obeys one only when its signature verifies with a key the node trusts: it refuses
to load the version, and a node serving it swaps to the version it is assigned or, when that is
the revoked one, to the last version it served before. A revocation is for good: it is never
withdrawn (push the bytes again under a new version), so one re-delivered into the bucket under
any key changes nothing. A rollout of a revoked version is refused, and one running is rolled
back. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesh.errors import InvalidArgumentError
from mesh.fleet.desired import check_token, check_version
from mesh.fleet.signing import SigningKey, canonical, sign_payload, signed_map, verify_payload
from mesh.wire.codec import VERSION

KIND = "revocation"
#: longest reason kept.
MAX_REASON = 500


def revocation_key(model: str, version: str) -> str:
    """The KV key of a version's revocation: ``<model>.<version>``."""
    return f"{check_token(model, 'model name')}.{check_version(version)}"


@dataclass(frozen=True)
class Revocation:
    model: str
    version: str
    reason: str
    #: wall-clock unix seconds of the revocation.
    time: float
    #: who revoked it (an identity or tool), for the record.
    by: str
    #: the public key it is signed with (``ed25519:...``) and the signature.
    key: str
    signature: str

    @property
    def target(self) -> str:
        """``model@version``, as a node's ``rejected`` names versions."""
        return f"{self.model}@{self.version}"

    @property
    def bucket_key(self) -> str:
        return revocation_key(self.model, self.version)

    def payload(self) -> bytes:
        return _payload(self.model, self.version, self.reason, self.time, self.by)


def _payload(model: str, version: str, reason: str, time: float, by: str) -> bytes:
    return canonical(
        {"kind": KIND, "model": model, "version": version, "reason": reason, "time": time, "by": by}
    )


def sign_revocation(
    key: SigningKey, model: str, version: str, reason: str, *, time: float, by: str = ""
) -> Revocation:
    revocation_key(model, version)
    reason = reason.strip()[:MAX_REASON] or "revoked"
    time = float(time)
    signature = sign_payload(key, _payload(model, version, reason, time, by))
    return Revocation(model, version, reason, time, by, key.public, signature)


def verify_revocation(r: Revocation, trusted: dict[str, Ed25519PublicKey] | None) -> None:
    """Raise ``SignatureError`` unless ``r`` is signed as it says, by a trusted key when
    ``trusted`` is given."""
    verify_payload(r.key, r.signature, r.payload(), trusted, f"the revocation of {r.target}")


def encode_revocation(r: Revocation) -> bytes:
    return canonical(
        {
            "v": VERSION,
            "kind": KIND,
            "model": r.model,
            "version": r.version,
            "reason": r.reason,
            "time": r.time,
            "by": r.by,
            "key": r.key,
            "signature": r.signature,
        }
    )


def decode_revocation(data: bytes) -> Revocation:
    obj = signed_map(data, KIND, "revocation", InvalidArgumentError)
    fields: dict[str, str] = {}
    for name in ("model", "version", "reason", "by", "key", "signature"):
        value = obj.get(name, "" if name == "by" else None)
        if not isinstance(value, str):
            raise InvalidArgumentError(f"revocation has no string {name!r}")
        fields[name] = value
    when = obj.get("time")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise InvalidArgumentError("revocation has no time")
    revocation_key(fields["model"], fields["version"])
    return Revocation(time=float(when), **fields)
