"""Who calls the ingress: the name its bearer token carries, else the address it calls from.

Named tokens (``callers``: name to token) name their callers: each name has its own share of the
ingress (requests and bytes of bodies in flight). The shared ``token`` names nobody, so a caller
that sends it, or any caller when the ingress requires no token, is its network address: the
peer's IP without its port, so that a caller opening many connections stays one caller. Behind
a proxy every caller has the proxy's address; give callers named tokens there.

A token is looked up by its SHA-256 digest, so a lookup's time says nothing about the tokens.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import unquote

BEARER = "bearer"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Callers:
    def __init__(self, shared: str = "", named: Mapping[str, str] | None = None) -> None:
        named = dict(named or {})
        if shared and shared in named.values():
            raise ValueError("the shared token may not also be a named caller's token")
        if len(set(named.values())) != len(named):
            raise ValueError("two named callers have the same token")
        if any(not token for token in named.values()):
            raise ValueError("a named caller's token may not be empty")
        self._shared = _digest(shared) if shared else None
        self._names = {_digest(token): name for name, token in named.items()}

    @property
    def required(self) -> bool:
        """Whether a caller must send a token at all."""
        return self._shared is not None or bool(self._names)

    def identify(self, authorization: str, address: str) -> str | None:
        """The caller sending ``authorization`` (an ``Authorization`` header's or metadata's
        value) from ``address``; None when a token is required and this one is missing or
        wrong."""
        if not self.required:
            return address
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != BEARER or not token:
            return None
        digest = _digest(token)
        name = self._names.get(digest)
        if name is not None:
            return name
        if self._shared is not None and hmac.compare_digest(digest, self._shared):
            return address
        return None


def peer_address(peer: str) -> str:
    """The IP of a gRPC peer (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``), without its port;
    any other form whole."""
    kind, _, rest = unquote(peer).partition(":")  # grpcio may write ``%5B::1%5D``
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]")
    return peer
