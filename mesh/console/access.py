"""Who may use the console: people's tokens, the session cookie a token opens, and the CSRF
token every action made with that cookie must carry. Pure (an injectable clock).

A token is accepted as ``Authorization: Bearer TOKEN`` (scripts) and as ``?token=`` on a page
(a person opening the link ``mesh up`` printed). A page opened with a token sets an HttpOnly,
SameSite=Strict cookie naming the person, signed with a key derived from the configured tokens
(so a restarted console still knows its sessions, and changing the tokens ends them all). A
browser sends that cookie by itself, also on requests another site makes it send, so every
action authenticated by the cookie must also carry the session's CSRF token, which only a page
of the console can read; a bearer token is never sent by a browser on its own and needs none.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.errors import InvalidArgumentError

COOKIE = "mesh_console"
#: how long a session lasts before the person opens the link with the token again.
SESSION_S = 12 * 3600.0
#: the person a single configured token (``MESH_CONSOLE_TOKEN``) stands for.
DEFAULT_PERSON = "operator"
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class Session:
    person: str
    issued: int
    nonce: str


class Access:
    """Checks tokens, cookies and CSRF tokens; ``tokens`` maps each person to their token."""

    def __init__(
        self, tokens: Mapping[str, str], *, clock: Callable[[], float] = time.time
    ) -> None:
        if not tokens:
            raise InvalidArgumentError("the console needs a token for people (MESH_CONSOLE_TOKEN)")
        for person, token in tokens.items():
            if not person or not person.replace("-", "").replace("_", "").isalnum():
                raise InvalidArgumentError(
                    f"person name {person!r} must be letters, digits, - or _"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise InvalidArgumentError(
                    f"the token of {person} is shorter than {MIN_TOKEN_CHARS} characters"
                )
        self._tokens = {person: token.encode() for person, token in tokens.items()}
        material = "\n".join(f"{p}={t}" for p, t in sorted(tokens.items())).encode()
        self._key = hashlib.sha256(b"mesh-console-session\n" + material).digest()
        self._clock = clock

    def person_for_token(self, token: str | None) -> str | None:
        """The person whose token this is, or None (every token compared in constant time)."""
        if not token:
            return None
        given = token.encode()
        found = None
        for person, expected in self._tokens.items():
            if hmac.compare_digest(given, expected):
                found = person
        return found

    def open_session(self, person: str) -> tuple[Session, str]:
        """A new session for ``person`` and its cookie value."""
        session = Session(person, int(self._clock()), secrets.token_urlsafe(12))
        payload = f"{session.person}.{session.issued}.{session.nonce}"
        return session, f"{payload}.{self._mac('cookie', payload)}"

    def session_for_cookie(self, value: str | None) -> Session | None:
        """The session a cookie names, if it is ours, intact and not expired."""
        if not value or len(value) > 512:
            return None
        parts = value.split(".")
        if len(parts) != 4:
            return None
        person, issued, nonce, mac = parts
        payload = f"{person}.{issued}.{nonce}"
        if not hmac.compare_digest(mac, self._mac("cookie", payload)):
            return None
        if person not in self._tokens or not issued.isdigit():
            return None
        age = self._clock() - int(issued)
        if age < -60 or age > SESSION_S:
            return None
        return Session(person, int(issued), nonce)

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", f"{session.person}.{session.issued}.{session.nonce}")

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))

    def _mac(self, purpose: str, payload: str) -> str:
        digest = hmac.new(self._key, f"{purpose}:{payload}".encode(), hashlib.sha256)
        return digest.hexdigest()[:40]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """Whether a request's ``Origin`` (when the browser sent one) is the console itself."""
    if origin is None:
        return True
    return bool(host) and origin == f"{scheme}://{host}"


__all__ = [
    "COOKIE",
    "DEFAULT_PERSON",
    "SESSION_S",
    "Access",
    "Session",
    "bearer_token",
    "same_origin",
]
