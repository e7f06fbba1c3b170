"""``free_port``: ports for processes that bind later, away from the kernel's outgoing ports."""

from __future__ import annotations

import random
import socket

import pytest

from mesh.local import servers
from mesh.local.servers import LOWEST_FREE_PORT, free_port


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(LOWEST_FREE_PORT <= p < servers._EPHEMERAL_LOW for p in ports)


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    busy, free = free_port(), free_port()
    monkeypatch.setattr(servers, "_handed_out", set())
    draws = iter([busy, busy, free])
    monkeypatch.setattr(random, "randrange", lambda _a, _b: next(draws))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", busy))
        listener.listen()
        assert free_port() == free
