"""A raw NATS protocol session with real credentials: for tests that write frames no client
library would (bad subjects, wrong header lengths, huge sizes), as an attacker holding a
device's stolen credentials would.

The server sends ``INFO`` with a nonce; ``connect_line`` answers with ``CONNECT`` carrying the
user JWT and the nonce signed with the identity's nkey, as nats-py does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import nkeys  # type: ignore[import-untyped]

_SEED = re.compile(r"-----BEGIN USER NKEY SEED-----\s*(\S+)\s*------END USER NKEY SEED------")
_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------")


def connect_line(creds_text: str, info_line: bytes) -> bytes:
    """The ``CONNECT`` line answering the server's ``INFO`` line, signed with the creds."""
    jwt, seed = _JWT.search(creds_text), _SEED.search(creds_text)
    if jwt is None or seed is None:
        raise ValueError("not a .creds file")
    info = json.loads(info_line.removeprefix(b"INFO").strip())
    options: dict[str, object] = {
        "verbose": False,
        "pedantic": False,
        "headers": True,
        "protocol": 1,
        "jwt": jwt.group(1),
    }
    if "nonce" in info:
        keys = nkeys.from_seed(seed.group(1).encode())
        options["sig"] = base64.b64encode(keys.sign(info["nonce"].encode())).decode()
    return b"CONNECT " + json.dumps(options).encode() + b"\r\n"


async def open_session(url: str, creds: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``url`` that has sent its signed ``CONNECT``; write frames next."""
    text = await asyncio.to_thread(creds.read_text)
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    info = await reader.readline()
    writer.write(connect_line(text, info))
    return reader, writer


__all__ = ["connect_line", "open_session"]
