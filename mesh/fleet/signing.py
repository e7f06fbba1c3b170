"""Signed model artifacts: ed25519 keys, and signatures over an artifact's SHA-256 and manifest.

A signature covers the canonical JSON of ``{"model", "version", "sha256", "manifest"}``: the
artifact's bytes (through their hash) and every field of the manifest (name, version,
thresholds, gates, reference statistics). Changing one byte of either breaks it. Keys are
ed25519 from the ``cryptography`` package; a public key is written ``ed25519:<base64url>`` so it
fits on one line of a settings file, and a node trusts a set of them (more than one while keys
rotate). Nothing here does I/O but reading and writing key files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import InvalidArgumentError
from mesh.wire.codec import VERSION

KEY_PREFIX = "ed25519:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_KIND = "artifact_signature"


class SignatureError(InvalidArgumentError):
    """An artifact is unsigned, signed by a key nobody trusts, or does not match its signature."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise SignatureError(f"{what} is not base64url") from None


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + _b64(raw)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key written ``ed25519:<base64url of 32 bytes>``."""
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise SignatureError(f"public key {text[:40]!r} does not start with {KEY_PREFIX!r}")
    raw = _unb64(text[len(KEY_PREFIX) :], "public key")
    if len(raw) != 32:
        raise SignatureError(f"public key has {len(raw)} bytes, an ed25519 key has 32")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> str:
        return public_key_text(self.private.public_key())

    def save(self, path: Path) -> Path:
        """Write the private key (PEM, mode 0600) to ``path`` and the public key to
        ``path.pub``; returns the public key's path. Refuses to overwrite a key."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub = path.with_name(path.name + ".pub")
        pub.write_text(self.public + "\n", encoding="utf-8")
        return pub

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidArgumentError(f"no signing key at {path}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"{path} is not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidArgumentError(f"{path} holds a {type(key).__name__}, not an ed25519 key")
        return cls(key)


def load_trusted_keys(values: list[str]) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by their text; an entry may also be a path to a ``.pub`` file."""
    keys: dict[str, Ed25519PublicKey] = {}
    for value in values:
        text = value.strip()
        if not text.startswith(KEY_PREFIX):
            path = Path(text)
            if not path.is_file():
                raise InvalidArgumentError(
                    f"trusted key {text!r} is neither {KEY_PREFIX}... nor a public key file"
                )
            text = path.read_text(encoding="utf-8").strip()
        keys[text] = parse_public_key(text)
    return keys


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8; what a signature is computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_payload(model: str, version: str, sha256: str, manifest: dict[str, Any]) -> bytes:
    return canonical(
        {"model": model, "version": version, "sha256": sha256.lower(), "manifest": manifest}
    )


@dataclass(frozen=True)
class ArtifactSignature:
    """``schemas/artifact-signature.schema.json``: who signed which artifact and manifest."""

    model: str
    version: str
    sha256: str
    manifest_sha256: str
    key: str
    signature: str

    def to_json(self) -> bytes:
        return canonical(
            {
                "v": VERSION,
                "kind": SIGNATURE_KIND,
                "model": self.model,
                "version": self.version,
                "sha256": self.sha256,
                "manifest_sha256": self.manifest_sha256,
                "key": self.key,
                "signature": self.signature,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> ArtifactSignature:
        obj = signed_map(data, SIGNATURE_KIND, "signature file", SignatureError)
        fields = {}
        for name in ("model", "version", "sha256", "manifest_sha256", "key", "signature"):
            value = obj.get(name)
            if not isinstance(value, str) or not value:
                raise SignatureError(f"signature is missing its {name!r}")
            fields[name] = value
        for name in ("sha256", "manifest_sha256"):
            if not _HEX64.match(fields[name]):
                raise SignatureError(f"signature's {name} is not 64 lowercase hex digits")
        return cls(**fields)


def signed_map(
    data: bytes, kind: str, what: str, error: type[InvalidArgumentError]
) -> dict[str, Any]:
    """The map of a signed JSON record (a signature file, a revocation): JSON, of ``kind``, in
    a contract version this side reads; else ``error`` saying what is wrong with ``what``."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise error(f"{what} is not JSON") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise error(f"{what} is not a {kind!r} record")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise error(f"{what} has contract version {version!r}; we speak {VERSION}")
    return obj


def sign(key: SigningKey, manifest: dict[str, Any], artifact_sha256: str) -> ArtifactSignature:
    model, version = _name_version(manifest)
    if str(manifest.get("sha256", "")).lower() != artifact_sha256.lower():
        raise SignatureError(
            f"manifest {model}@{version} names sha256 {manifest.get('sha256')}, the artifact "
            f"is {artifact_sha256}: refusing to sign a manifest for other bytes"
        )
    payload = signed_payload(model, version, artifact_sha256, manifest)
    return ArtifactSignature(
        model=model,
        version=version,
        sha256=artifact_sha256.lower(),
        manifest_sha256=hashlib.sha256(canonical(manifest)).hexdigest(),
        key=key.public,
        signature=_b64(key.private.sign(payload)),
    )


def verify(
    signature: ArtifactSignature,
    manifest: dict[str, Any],
    artifact: bytes,
    trusted: dict[str, Ed25519PublicKey] | None,
) -> None:
    """Raise ``SignatureError`` unless ``signature`` is valid for these exact bytes and manifest
    and, when ``trusted`` is given, was made by one of those keys."""
    model, version = _name_version(manifest)
    if (signature.model, signature.version) != (model, version):
        raise SignatureError(
            f"signature is for {signature.model}@{signature.version}, "
            f"the manifest is {model}@{version}"
        )
    actual = hashlib.sha256(artifact).hexdigest()
    if actual != signature.sha256.lower():
        raise SignatureError(
            f"artifact of {model}@{version} has sha256 {actual[:16]}..., its signature covers "
            f"{signature.sha256[:16]}...: the bytes were changed or truncated"
        )
    if str(manifest.get("sha256", "")).lower() != actual:
        raise SignatureError(
            f"manifest of {model}@{version} names sha256 {manifest.get('sha256')}, "
            f"the artifact is {actual}"
        )
    if trusted is not None and signature.key not in trusted:
        raise SignatureError(
            f"{model}@{version} is signed by {signature.key}, which this node does not trust"
        )
    public = trusted[signature.key] if trusted is not None else parse_public_key(signature.key)
    raw = _unb64(signature.signature, "signature")
    try:
        public.verify(raw, signed_payload(model, version, actual, manifest))
    except InvalidSignature:
        raise SignatureError(
            f"signature of {model}@{version} does not verify with {signature.key}: the manifest "
            "or the artifact differ from what was signed"
        ) from None


def sign_payload(key: SigningKey, payload: bytes) -> str:
    """A signature of ``payload`` (base64url), for records other than artifacts."""
    return _b64(key.private.sign(payload))


def verify_payload(
    key_text: str,
    signature: str,
    payload: bytes,
    trusted: dict[str, Ed25519PublicKey] | None,
    what: str,
) -> None:
    """Raise ``SignatureError`` unless ``signature`` by ``key_text`` is valid for ``payload``
    and, when ``trusted`` is given, that key is one of them."""
    if trusted is not None and key_text not in trusted:
        raise SignatureError(f"{what} is signed by {key_text}, which is not trusted here")
    public = trusted[key_text] if trusted is not None else parse_public_key(key_text)
    try:
        public.verify(_unb64(signature, "signature"), payload)
    except InvalidSignature:
        raise SignatureError(f"the signature of {what} does not verify with {key_text}") from None


def _name_version(manifest: dict[str, Any]) -> tuple[str, str]:
    model, version = manifest.get("name"), manifest.get("version")
    if not isinstance(model, str) or not isinstance(version, str):
        raise SignatureError("manifest has no string name and version")
    return model, version
