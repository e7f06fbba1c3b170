"""The soak's report: a record per minute, the chaos it ran, and the verdicts the issue asks for,
as the JSON ``mesh soak --report`` writes (keys kept as issue 31 names them: ``requests``,
``answered``, ``lost``, ``events``, ``chaos``, ``minutes`` with ``minute``, ``requests``,
``lost``, ``p99_ms``, ``rss_mb``, ``fds``, ``tasks``).

The verdicts compare the second minute (the baseline: the mesh warm, no chaos yet) with the last
(after the chaos, the mesh recovered): nothing lost; each process's memory grown under 10 %; the
last minute's p99 within 1.5 times the second's; no process with more asyncio tasks or open
descriptors than it had (the hub's members counted together: connections move between them when
one dies). A process restarted by the chaos is judged all the same, from its new start; the
report says which were restarted.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.dev.soak.tally import EventTally, LoadTally, MinuteTally

RSS_GROWTH_LIMIT = 0.10
P99_RATIO_LIMIT = 1.5
#: the minute judged as the baseline (0-based: the second).
BASELINE = 1
#: how the report names the hub's servers (``nats-hub-0``...).
HUB_PROCESS_PREFIX = "nats-hub"


@dataclass
class MinuteRecord:
    """What one minute looked like: its requests' outcomes and the processes and streams as
    sampled during it."""

    minute: int
    load: MinuteTally
    rss_mb: dict[str, float]
    cpu_ms_per_s: dict[str, float]
    link_bytes_per_s: dict[str, dict[str, float]]
    fds: dict[str, int]
    tasks: dict[str, int]
    streams: dict[str, dict[str, int]]
    hard_examples: dict[str, int]
    events: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        load = self.load
        p50, p99 = load.p(0.5), load.p(0.99)
        return {
            "minute": self.minute,
            "requests": load.requests,
            "answered": load.answered,
            "lost": load.lost,
            "lost_by": dict(load.lost_by),
            "p50_ms": None if p50 is None else round(p50, 2),
            "p99_ms": None if p99 is None else round(p99, 2),
            "tiers": load.per_tier(),
            "degraded": dict(load.degraded),
            "hard_examples": self.hard_examples,
            "events": self.events,
            "rss_mb": self.rss_mb,
            "cpu_ms_per_s": self.cpu_ms_per_s,
            "link_bytes_per_s": self.link_bytes_per_s,
            "fds": self.fds,
            "tasks": self.tasks,
            "streams": self.streams,
        }


@dataclass
class Verdicts:
    lost: int
    events_without_one_result: int
    rss_growth: dict[str, float]
    p99_ratio: float | None
    tasks_growth: dict[str, int]
    fds_growth: dict[str, int]

    @property
    def nothing_lost(self) -> bool:
        return self.lost == 0 and self.events_without_one_result == 0

    @property
    def steady(self) -> bool:
        return (
            all(g < RSS_GROWTH_LIMIT for g in self.rss_growth.values())
            and (self.p99_ratio is None or self.p99_ratio <= P99_RATIO_LIMIT)
            and not self.tasks_growth
            and not self.fds_growth
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "nothing_lost": self.nothing_lost,
            "lost": self.lost,
            "events_without_one_result": self.events_without_one_result,
            "rss_growth": {k: round(v, 4) for k, v in sorted(self.rss_growth.items())},
            "rss_growth_limit": RSS_GROWTH_LIMIT,
            "rss_within_limit": all(g < RSS_GROWTH_LIMIT for g in self.rss_growth.values()),
            "p99_ratio_last_to_second_minute": (
                None if self.p99_ratio is None else round(self.p99_ratio, 3)
            ),
            "p99_ratio_limit": P99_RATIO_LIMIT,
            "tasks_grown": self.tasks_growth,
            "fds_grown": self.fds_growth,
            "steady": self.steady,
        }


def judge(minutes: list[MinuteRecord], load: LoadTally, events: EventTally) -> Verdicts:
    """The verdicts over the minutes recorded (the second against the last)."""
    waiting = len(events.waiting) + len(events.repeated)
    if len(minutes) <= BASELINE + 1:
        return Verdicts(load.lost_total, waiting, {}, None, {}, {})
    first, last = minutes[BASELINE], minutes[-1]
    rss = {
        name: (last.rss_mb[name] - mb) / mb
        for name, mb in first.rss_mb.items()
        if name in last.rss_mb and mb > 0
    }
    p_first, p_last = first.load.p(0.99), last.load.p(0.99)
    ratio = None if not p_first or p_last is None else p_last / p_first
    tasks = _grown(first.tasks, last.tasks)
    fds = _grown(_hub_as_one(first.fds), _hub_as_one(last.fds))
    return Verdicts(load.lost_total, waiting, rss, ratio, tasks, fds)


def _grown(first: dict[str, int], last: dict[str, int]) -> dict[str, int]:
    return {k: last[k] - v for k, v in first.items() if k in last and last[k] > v}


def _hub_as_one(fds: dict[str, int]) -> dict[str, int]:
    """The hub's members counted together: a connection that moves to another member when one
    dies (a site's leaf link, the cloud node) is not a new descriptor."""
    hub = {k: v for k, v in fds.items() if k.startswith(HUB_PROCESS_PREFIX)}
    out = {k: v for k, v in fds.items() if k not in hub}
    if hub:
        out["nats-hub (all members)"] = sum(hub.values())
    return out


@dataclass
class SoakReport:
    config: dict[str, Any]
    load: LoadTally
    events: EventTally
    minutes: list[MinuteRecord]
    chaos: list[dict[str, Any]]
    rollouts: list[dict[str, Any]]
    restarted: dict[str, int]
    hard_examples: dict[str, int]
    phases: dict[str, float]
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def verdicts(self) -> Verdicts:
        return judge(self.minutes, self.load, self.events)

    def to_json(self) -> dict[str, Any]:
        ev = self.events
        return {
            "requests": self.load.requests,
            "answered": self.load.answered_total,
            "lost": self.load.lost_total,
            "lost_examples": self.load.lost_examples,
            "events": {
                "published": len(ev.published),
                "results": sum(ev.results.values()),
                "without_result": len(ev.waiting),
                "with_more_than_one_result": len(ev.repeated),
                "error_results": ev.error_results,
                "refused_at_publish": dict(ev.refused),
            },
            "hard_examples": self.hard_examples,
            "chaos": self.chaos,
            "rollouts": self.rollouts,
            "restarted": self.restarted,
            "verdicts": self.verdicts.to_json(),
            "minutes": [m.to_json() for m in self.minutes],
            "config": self.config,
            "phases_s": self.phases,
            "machine": self.machine,
        }


def machine() -> dict[str, Any]:
    """The machine the soak ran on, and the code."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0]
        info["memory_kb"] = int(first.split()[1])
    info["uname"] = _run(["uname", "-a"])
    info["commit"] = _run(["git", "rev-parse", "--short", "HEAD"])
    from mesh.local.servers import server_binary

    info["nats_server"] = _run([server_binary(), "--version"])
    return info


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


__all__ = ["MinuteRecord", "SoakReport", "Verdicts", "judge", "machine"]
