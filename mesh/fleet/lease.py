"""A lease in one KV key, taken and renewed with compare-and-set on the key's revision.

Any number of holders compete for a key; one holds it. The holder renews it every tick; the
others watch its revision and take it over when it has not moved for ``lease_s`` of their own
clock (no wall clocks compared across machines). A holder that cannot renew stops acting before
its lease could have passed to another, and one that stops hands the lease on at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("mesh.fleet.lease")


class KvLease:
    def __init__(
        self,
        kv: KeyValue,
        key: str,
        holder: str,
        lease_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder
        self.lease_s = lease_s
        self._clock = clock
        self._wall_clock = wall_clock
        #: the key's revision as this holder last wrote it, while it holds the lease.
        self._revision: int | None = None
        self._renewed_at = 0.0
        #: the other holder's revision and when this one first saw it.
        self._seen: tuple[int, float] | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def hold(self) -> bool:
        """Renew the lease, or take it if it is free or ran out; whether to act now."""
        now = self._clock()
        value = json.dumps({"holder": self.holder, "at": self._wall_clock()}).encode()
        if self._revision is not None:
            return await self._renew(value, now)
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            return await self._take(value, None)
        revision = int(entry.revision or 0)
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, now)
        try:
            holder = json.loads(entry.value or b"{}").get("holder")
        except ValueError:
            holder = None
        if holder == self.holder or now - self._seen[1] >= self.lease_s:
            return await self._take(value, revision)
        return False

    async def release(self) -> None:
        """Hand the lease on at once rather than after it runs out."""
        if self._revision is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(self.key, last=self._revision)
            self._revision = None

    async def _renew(self, value: bytes, now: float) -> bool:
        assert self._revision is not None
        try:
            self._revision = await self.kv.update(self.key, value, last=self._revision)
        except KeyWrongLastSequenceError:
            log.warning("%s lost the lease %s", self.holder, self.key)
            self._revision = None
            return False
        except Exception as exc:
            # Not renewed: act only while no one else can have taken it over.
            held = now - self._renewed_at < self.lease_s * 0.5
            if not held:
                self._revision = None
            log.warning("%s could not renew the lease %s: %r", self.holder, self.key, exc)
            return held
        self._renewed_at = now
        return True

    async def _take(self, value: bytes, revision: int | None) -> bool:
        try:
            if revision is None:
                self._revision = await self.kv.create(self.key, value)
            else:
                self._revision = await self.kv.update(self.key, value, last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False
        self._renewed_at = self._clock()
        return True
