"""What a client learns from its own ``.creds`` file: the inbox prefix its permissions allow.

Every identity of the mesh may subscribe to one inbox prefix only, ``_INBOX_<name>``, so nobody
reads replies meant for someone else (``mesh.security.permissions``). A client therefore has to
make its reply subjects under that prefix (nats-py's ``inbox_prefix``). Rather than asking every
application to repeat a name that is already in its credentials, ``inbox_prefix_of`` reads it
from the user JWT's own subscribe permissions. Reading the claims needs no key and checks no
signature: the server does that when the client connects.

No nkeys or nats-jwt here: the SDK imports this module and stays light.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from mesh.errors import InvalidArgumentError

_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------")
_INBOX = re.compile(r"^(_INBOX_[A-Za-z0-9_\-]+)\.>$")
_SEED = re.compile(r"-----BEGIN USER NKEY SEED-----\s*(\S+)\s*------END USER NKEY SEED------")


class CredentialsError(InvalidArgumentError):
    """A ``.creds`` file that cannot be read as one."""


def user_claims(creds: Path | str) -> dict[str, Any]:
    """The claims of the user JWT in a ``.creds`` file (unverified)."""
    path = Path(creds)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read credentials {path}: {exc}") from None
    found = _JWT.search(text)
    if found is None:
        raise CredentialsError(f"{path} holds no NATS user JWT: is it a .creds file?")
    parts = found.group(1).split(".")
    if len(parts) != 3:
        raise CredentialsError(f"{path}: the user JWT is malformed")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError) as exc:
        raise CredentialsError(f"{path}: the user JWT is malformed ({exc})") from None
    if not isinstance(claims, dict):
        raise CredentialsError(f"{path}: the user JWT is malformed")
    return claims


def inbox_prefix_of(creds: Path | str) -> str | None:
    """The ``_INBOX_<name>`` prefix the credentials may subscribe to; None when they name none
    (credentials made elsewhere, which use nats-py's default ``_INBOX``)."""
    claims = user_claims(creds)
    nats_claims = claims.get("nats")
    sub = nats_claims.get("sub") if isinstance(nats_claims, dict) else None
    allowed = sub.get("allow") if isinstance(sub, dict) else None
    for subject in allowed if isinstance(allowed, list) else []:
        match = _INBOX.match(subject) if isinstance(subject, str) else None
        if match:
            return match.group(1)
    return None


def user_seed(creds: Path | str) -> bytes | None:
    """The nkey seed in a ``.creds`` file: a secret only its holder has (the SDK derives the
    key of its event ids' tags from it); None when the file holds none."""
    try:
        text = Path(creds).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read credentials {creds}: {exc}") from None
    found = _SEED.search(text)
    return found.group(1).encode() if found else None


__all__ = ["CredentialsError", "inbox_prefix_of", "user_claims", "user_seed"]
