"""``mesh soak`` as checks call it (issue 31): a minute on a three-server hub and two sites with
a hub member killed, its report with the keys the issue names, exit 0 when nothing was lost."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from mesh.dev.models.demo import DemoArtifacts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_minute_of_soak_with_a_hub_member_killed_reports_each_minute_and_loses_nothing(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    report_path = tmp_path / "soak.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "soak", "--minutes", "1", "--sites", "2",
        "--hub-cluster", "3", "--only", "kill-hub-member", "--rate", "20", "--events", "2",
        "--report", str(report_path), "--cache", str(demo.root),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 280)
    assert proc.returncode == 0, err.decode()[-3000:]
    report = json.loads(report_path.read_text())
    assert {"requests", "answered", "lost", "events", "chaos", "minutes"} <= set(report)
    assert report["lost"] == 0 and report["answered"] == report["requests"] > 600
    assert report["events"]["published"] == report["events"]["results"] > 50
    kills = [c for c in report["chaos"] if c["action"].startswith("kill hub member")]
    assert kills and all("hub" in c["action"] and c["at_s"] > 0 for c in kills)
    [minute] = report["minutes"]
    assert {"minute", "requests", "lost", "p99_ms", "rss_mb", "fds", "tasks"} <= set(minute)
    assert minute["minute"] == 1 and minute["lost"] == 0 and minute["p99_ms"] > 0
    assert {"nats-hub-0", "nats-site-0", "cloud-0", "site-1-edge-1"} <= set(minute["rss_mb"])
    assert minute["tasks"]["cloud-0"] > 0 and minute["fds"]["nats-hub-1"] > 0
    assert report["machine"]["cores"] and report["machine"]["nats_server"]
