"""What a NATS failure means, told as the mesh's typed errors with what to do about it.

``mesh_error`` turns nats-py's exceptions into ``MeshError``s. ``check_url`` refuses an address
that is no NATS URL before anything is dialled: nats-py would read ``http://host:4222`` or
``nats//host`` as a host named ``http`` or ``nats`` and report an unknown host for ever.
``rejected`` and ``unreachable`` say why a first connection failed: credentials the server does
not accept (``UnauthenticatedError``, final: retrying cannot help), or a server that cannot be
reached (refused, unknown host, TLS, not a NATS port: ``UnavailableError``, which a process
starting before its server may wait out).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

import nats.errors

from mesh.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MeshError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from mesh.transport.denials import Rights

#: the schemes nats-py dials.
SCHEMES = ("nats", "tls", "ws", "wss")
AUTHORIZATION_VIOLATION = "Authorization Violation"
#: the server's words for credentials that were valid and are no longer.
EXPIRED = (
    "User Authentication Expired",
    "Authentication Revoked",
    "Account Authentication Expired",
)


def mesh_error(exc: Exception, what: str) -> MeshError:
    """The mesh's typed error for a nats-py failure while doing ``what``."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, nats.errors.NoRespondersError):
        return UnavailableError(
            f"{what}: no tier serves it on this NATS server (no responders): "
            "is a node running and connected?"
        )
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return DeadlineExceededError(f"{what}: no answer in time")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return ResourceExhaustedError(
            f"{what}: the request is larger than the server's max_payload"
        )
    if isinstance(exc, nats.errors.BadSubjectError):
        return InvalidArgumentError(f"{what}: not a valid NATS subject")
    if isinstance(exc, nats.errors.Error | OSError):
        # Closed, draining, reconnecting, stale, outbound buffer full, slow consumer: the
        # connection cannot carry the request now; a retry later may succeed.
        return UnavailableError(f"{what}: NATS connection not usable ({type(exc).__name__})")
    return UnavailableError(f"{what}: {type(exc).__name__}: {exc}")


def check_url(url: str) -> str:
    """``url`` if nats-py can dial it as meant; else an ``InvalidArgumentError`` saying how to
    write it. A bare ``host:port`` is nats-py's own shorthand and stays allowed."""
    text = url.strip()
    example = "write it as nats://HOST:PORT (mesh up prints MESH_NATS_URL=...)"
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise InvalidArgumentError(
                f"{url!r} is not a NATS URL: scheme {scheme}:// is not one of "
                f"{', '.join(s + '://' for s in SCHEMES)}; {example}"
            )
        rest = text.split("://", 1)[1]
    elif "/" in text or not text:
        raise InvalidArgumentError(f"{url!r} is not a NATS URL; {example}")
    else:
        rest = text
    try:
        parts = urlsplit(f"nats://{rest}")
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"{url!r} is not a NATS URL ({exc}); {example}") from None
    if not parts.hostname or (port is not None and not 0 < port < 65536):
        raise InvalidArgumentError(f"{url!r} is not a NATS URL: no host or port; {example}")
    return text


def is_rejection(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing the credentials themselves."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()  # nats-py lowercases what the server said
    return AUTHORIZATION_VIOLATION.lower() in text or any(w.lower() in text for w in EXPIRED)


def rejected(urls: Sequence[str], rights: Rights, creds: str | None) -> UnauthenticatedError:
    if creds is None:
        return UnauthenticatedError(
            f"the NATS server at {', '.join(urls)} takes no connection without credentials "
            "(Authorization Violation): give them (--creds, MESH_CREDS; mesh up prints "
            "MESH_CREDS=...)"
        )
    shown = f"credentials {creds}"
    who = f" ({rights.who})" if rights.identity else ""
    return UnauthenticatedError(
        f"the NATS server at {', '.join(urls)} rejected {shown}{who} (Authorization "
        "Violation): they belong to another fleet, or were revoked or expired; "
        "use the credentials of this fleet (mesh up prints MESH_CREDS=..., mesh identities "
        "init writes them)"
    )


def unreachable(urls: Sequence[str], cause: BaseException | None, waited_s: float) -> MeshError:
    """Why no server at ``urls`` could be reached within ``waited_s``, and what to check."""
    head = f"cannot connect to NATS at {', '.join(urls)} within {waited_s:.0f} s"
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = getattr(cause, "verify_message", None) or cause
        why = (
            f"TLS failed, the server's certificate is not trusted ({reason}); "
            "give the CA that signed it (--tls-ca, MESH_NATS__TLS_CA), and a host name the "
            "certificate names"
        )
    elif isinstance(cause, ssl.SSLError):
        reason = getattr(cause, "reason", None) or cause
        why = (
            f"TLS failed ({reason}): does the server speak TLS there, and does it take this "
            "client's certificate?"
        )
    elif isinstance(cause, ConnectionRefusedError):
        why = "connection refused, nothing listens there: is the server running, and is that "
        why += "its client port?"
    elif isinstance(cause, socket.gaierror):
        hosts = sorted({urlsplit(u if "://" in u else f"nats://{u}").hostname or u for u in urls})
        why = f"unknown host {', '.join(hosts)} ({cause.strerror}): check the host in the URL"
    elif isinstance(cause, TimeoutError | asyncio.TimeoutError | nats.errors.TimeoutError):
        why = (
            "something accepted the connection but did not greet as a NATS server (the "
            "monitoring or leafnode port?), or the network drops it"
        )
    else:
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        why = f"no server answered{detail}: is it up, and is the URL its client port?"
    return UnavailableError(f"{head}: {why}")


__all__ = ["check_url", "is_rejection", "mesh_error", "rejected", "unreachable"]
