"""The one process supervisor of the rigs: ready lines, logs, stops that are safe twice."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from mesh.errors import UnavailableError
from mesh.local.supervisor import ChildProcess

READY = "TEST_READY"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_child_is_ready_once_it_prints_its_ready_line(tmp_path: Path) -> None:
    child = ChildProcess(
        "ready",
        _python(
            f"import time; print('starting'); print('{READY} port=42', flush=True); time.sleep(60)"
        ),
        tmp_path / "ready.log",
        ready_prefix=READY,
    )
    await child.start(timeout=20)
    assert child.running and child.info == {"port": "42"}
    await child.stop()
    await child.stop()
    assert not child.running
    log = await asyncio.to_thread((tmp_path / "ready.log").read_text)
    assert "starting" in log and READY in log


async def test_a_child_that_ignores_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"print('{READY}', flush=True); time.sleep(60)"
    )
    child = ChildProcess(
        "stubborn", _python(code), tmp_path / "s.log", ready_prefix=READY, grace_s=0.5
    )
    await child.start(timeout=20)
    await child.stop()
    assert child.returncode == -9
    await child.kill()


async def test_a_one_megabyte_output_line_does_not_stop_the_log_copy(tmp_path: Path) -> None:
    code = (
        f"import sys, time; print('{READY}', flush=True); "
        "sys.stdout.write('x' * 1_000_000 + '\\n'); print('after', flush=True); time.sleep(60)"
    )
    child = ChildProcess("long", _python(code), tmp_path / "long.log", ready_prefix=READY)
    await child.start(timeout=20)
    for _ in range(100):
        text = await asyncio.to_thread((tmp_path / "long.log").read_text)
        if "after" in text:
            break
        await asyncio.sleep(0.05)
    await child.stop()
    assert "after" in text and len(text) > 1_000_000


async def test_a_child_that_exits_before_its_ready_line_is_reported(tmp_path: Path) -> None:
    child = ChildProcess(
        "dies",
        _python("print('bad settings'); raise SystemExit(2)"),
        tmp_path / "d.log",
        ready_prefix=READY,
    )
    with pytest.raises(UnavailableError, match="bad settings"):
        await child.start(timeout=20)
    await child.stop()
