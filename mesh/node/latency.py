"""Recent latencies of one upstream, for the "is the budget enough to escalate" decision.

Pure: no I/O, an injectable clock. A tracker keeps the last ``window`` observations that are at
most ``max_age_seconds`` old, so a p95 reflects the link as it is now, not as it was an hour
ago. Quantiles interpolate linearly between order statistics (numpy's default ``linear``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class LatencyTracker:
    """Sliding record of round-trip latencies (milliseconds) to one upstream."""

    def __init__(
        self,
        window: int = 200,
        max_age_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        min_samples: int = 5,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be > 0")
        if not 1 <= min_samples <= window:
            raise ValueError("min_samples must be in [1, window]")
        self.window = window
        self.max_age_seconds = max_age_seconds
        self.min_samples = min_samples
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._sorted: list[float] | None = None

    def observe(self, ms: float) -> None:
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"latency must be a finite non-negative number, got {ms!r}")
        self._samples.append((self._clock(), float(ms)))
        self._sorted = None

    @property
    def count(self) -> int:
        self._expire()
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in ms, or ``None`` with fewer than ``min_samples``."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        self._expire()
        if len(self._samples) < self.min_samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(ms for _, ms in self._samples)
        values = self._sorted
        position = q * (len(values) - 1)
        lower = math.floor(position)
        upper = min(lower + 1, len(values) - 1)
        return values[lower] + (values[upper] - values[lower]) * (position - lower)

    @property
    def p50(self) -> float | None:
        return self.quantile(0.5)

    @property
    def p95(self) -> float | None:
        return self.quantile(0.95)

    def clear(self) -> None:
        self._samples.clear()
        self._sorted = None

    def _expire(self) -> None:
        cutoff = self._clock() - self.max_age_seconds
        expired = False
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
            expired = True
        if expired:
            self._sorted = None


__all__ = ["LatencyTracker"]
