"""The node's energy ledger: what each answer cost the device, in joules, by component.

- ``model``: the CPU time of the model calls (the kernel's per-thread counter around the call;
  on the event loop one call in ``sample_every`` is timed and the rest estimated from those, as a
  clock read costs about a microsecond; in a worker thread every call is timed);
- ``node``: the rest of the process's CPU time (request handling, NATS, the fleet agent...),
  read from the kernel's per-process counter when the ledger settles and shared among the models
  by the answers each gave since the last settlement;
- ``radio``: the messages and bytes sent upstream and received back (escalations, forwards,
  audits), times the link's energy per message and per byte.

CPU time becomes joules at the profile's power per busy core, or at the power a compute sensor
measured (``calibrate``). The ledger settles (turns counters into joules) on the node's tick and
when its metrics are scraped; it keeps the running totals to tell the average power over a
window. Pure: the CPU clock and the clock are injected; it reads no file.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mesh.energy.profiles import DeviceProfile

#: the model label of CPU time no model's answers account for (a node with no answers yet).
NODE_ONLY = "_node"
COMPONENTS = ("model", "node", "radio")


class CallMeter:
    """CPU time of one model's calls: timed ones summed, the others counted to be estimated."""

    __slots__ = ("_countdown", "calls", "every", "timed", "timed_seconds", "unsettled")

    def __init__(self, every: int = 8) -> None:
        self.every = max(1, every)
        self._countdown = 1
        #: calls since the last settlement, timed ones among them and their CPU seconds.
        self.calls = 0
        self.timed = 0
        self.timed_seconds = 0.0
        #: CPU seconds of worker calls (always timed) since the last settlement.
        self.unsettled = 0.0

    def wants_timing(self) -> bool:
        """Count a call on the loop; True for the one in ``every`` to be timed."""
        self.calls += 1
        self._countdown -= 1
        if self._countdown:
            return False
        self._countdown = self.every
        return True

    def timed_call(self, seconds: float) -> None:
        self.timed += 1
        self.timed_seconds += seconds

    def worker_call(self, seconds: float) -> None:
        self.unsettled += seconds

    def take(self) -> float:
        """Estimated CPU seconds of the calls since the last take."""
        estimate = self.timed_seconds * self.calls / self.timed if self.timed else 0.0
        total = estimate + self.unsettled
        if self.timed:
            # keep the count of calls not timed yet, so their estimate comes with the next ones
            self.calls = self.timed = 0
            self.timed_seconds = 0.0
        self.unsettled = 0.0
        return total


@dataclass(slots=True)
class RadioTally:
    """Messages and bytes exchanged upstream (fractional messages: see ``Coalescer``)."""

    sent: float = 0.0
    received: float = 0.0
    sent_bytes: float = 0.0
    received_bytes: float = 0.0

    def add(self, other: RadioTally) -> None:
        self.sent += other.sent
        self.received += other.received
        self.sent_bytes += other.sent_bytes
        self.received_bytes += other.received_bytes


@dataclass(slots=True)
class ModelEnergy:
    """Running totals of one model (or ``NODE_ONLY``) at this node."""

    model_j: float = 0.0
    node_j: float = 0.0
    radio_j: float = 0.0
    cpu_s: float = 0.0
    calls: float = 0.0
    answers: float = 0.0
    radio: RadioTally = field(default_factory=RadioTally)

    @property
    def compute_j(self) -> float:
        return self.model_j + self.node_j

    @property
    def total_j(self) -> float:
        return self.model_j + self.node_j + self.radio_j


class EnergyLedger:
    def __init__(
        self,
        profile: DeviceProfile,
        *,
        sample_every: int = 8,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        keep_s: float = 120.0,
    ) -> None:
        self.profile = profile
        self.sample_every = sample_every
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._keep_s = keep_s
        self.meters: dict[str, CallMeter] = {}
        self._radio: dict[str, RadioTally] = {}
        self.models: dict[str, ModelEnergy] = {}
        self._answers: dict[str, float] = {}
        self._cpu = cpu_clock()
        self.started = clock()
        #: joules a CPU-second costs now: the profile's, or a compute sensor's measurement.
        self.w_per_core = profile.active_w_per_core
        self.compute_source = "profile"
        #: (time, total joules) at each settlement, to tell the power over a window.
        self._history: deque[tuple[float, float]] = deque([(self.started, 0.0)], maxlen=8192)
        self.total_j = 0.0
        self.cpu_s = 0.0
        #: called with (model, component, joules) for each amount settled (the metrics).
        self.on_settled: Callable[[str, str, float], None] | None = None

    # --- what the node tells it, as it happens -----------------------------------------------

    def meter(self, model: str) -> CallMeter:
        meter = self.meters.get(model)
        if meter is None:
            meter = self.meters[model] = CallMeter(self.sample_every)
        return meter

    def exchanged(
        self, model: str, sent_bytes: int, received_bytes: int, sent: float = 1.0
    ) -> None:
        """One request sent upstream (``sent`` messages: less than one when it went up in a
        write with others) and its reply received."""
        tally = self._radio.get(model)
        if tally is None:
            tally = self._radio[model] = RadioTally()
        tally.sent += sent
        tally.sent_bytes += sent_bytes
        tally.received += 1.0
        tally.received_bytes += received_bytes

    def unanswered(self, model: str, sent: float = 1.0) -> None:
        """A request sent upstream that got no reply: its bytes are taken as the mean so far."""
        tally = self._radio.get(model)
        if tally is None:
            tally = self._radio[model] = RadioTally()
        mean = self.mean_sent_bytes()
        tally.sent += sent
        tally.sent_bytes += mean

    # --- settling ----------------------------------------------------------------------------

    def calibrate(self, w_per_core: float | None, source: str = "profile") -> None:
        """Price a CPU-second at what a compute sensor measured (None: the profile's)."""
        if w_per_core is None or w_per_core <= 0:
            self.w_per_core, self.compute_source = self.profile.active_w_per_core, "profile"
        else:
            self.w_per_core, self.compute_source = w_per_core, source

    def settle(self, answers: Mapping[str, float]) -> float:
        """Turn what was counted since the last settlement into joules; ``answers`` holds the
        running count of answers per model. Returns the time settled at."""
        now = self._clock()
        cpu = self._cpu_clock()
        process_s, self._cpu = max(0.0, cpu - self._cpu), cpu
        self.cpu_s += process_s
        model_s = {name: meter.take() for name, meter in self.meters.items()}
        new_answers = {}
        for name, count in answers.items():
            new_answers[name] = max(0.0, count - self._answers.get(name, 0.0))
            self._answers[name] = count
        rest = max(0.0, process_s - sum(model_s.values()))
        price = self.w_per_core
        for name, seconds in model_s.items():
            if seconds:
                self._add(name, "model", seconds * price).cpu_s += seconds
        self._share_rest(rest * price, new_answers, model_s)
        link = self.profile.link
        for name, tally in self._radio.items():
            joules = link.joules(tally.sent_bytes, tally.received_bytes, tally.sent, tally.received)
            self._add(name, "radio", joules).radio.add(tally)
        self._radio = {}
        for name, count in new_answers.items():
            if count:
                self._entry(name).answers += count
        self._history.append((now, self.total_j))
        while len(self._history) > 2 and now - self._history[1][0] > self._keep_s:
            self._history.popleft()
        return now

    def _share_rest(
        self, joules: float, answers: Mapping[str, float], model_s: Mapping[str, float]
    ) -> None:
        """The process's other CPU, shared by the answers each model gave (by its model CPU when
        none answered; to ``NODE_ONLY`` when neither)."""
        if joules <= 0:
            return
        weights = {m: n for m, n in answers.items() if n > 0} or {
            m: s for m, s in model_s.items() if s > 0
        }
        total = sum(weights.values())
        if not total:
            self._add(NODE_ONLY, "node", joules)
            return
        for name, weight in weights.items():
            self._add(name, "node", joules * weight / total)

    def _entry(self, model: str) -> ModelEnergy:
        entry = self.models.get(model)
        if entry is None:
            entry = self.models[model] = ModelEnergy()
        return entry

    def _add(self, model: str, component: str, joules: float) -> ModelEnergy:
        entry = self._entry(model)
        if component == "model":
            entry.model_j += joules
        elif component == "node":
            entry.node_j += joules
        else:
            entry.radio_j += joules
        self.total_j += joules
        if self.on_settled is not None and joules:
            self.on_settled(model, component, joules)
        return entry

    # --- what it tells -----------------------------------------------------------------------

    def watts(self, over_s: float, now: float | None = None) -> float | None:
        """Average power over the last ``over_s`` seconds of settlements (None before two)."""
        history = self._history
        if len(history) < 2:
            return None
        end_t, end_j = history[-1] if now is None else _at(history, now)
        start_t, start_j = _at(history, end_t - over_s)
        if end_t - start_t <= 0:
            return None
        return (end_j - start_j) / (end_t - start_t)

    def totals(self) -> ModelEnergy:
        out = ModelEnergy()
        for entry in self.models.values():
            out.model_j += entry.model_j
            out.node_j += entry.node_j
            out.radio_j += entry.radio_j
            out.cpu_s += entry.cpu_s
            out.answers += entry.answers
            out.radio.add(entry.radio)
        return out

    def joules_per_answer(self) -> float | None:
        totals = self.totals()
        return totals.total_j / totals.answers if totals.answers else None

    def mean_sent_bytes(self) -> float:
        radio = self.totals().radio
        return radio.sent_bytes / radio.sent if radio.sent else 0.0

    def mean_received_bytes(self) -> float:
        radio = self.totals().radio
        return radio.received_bytes / radio.received if radio.received else 0.0

    def upstream_joules(self) -> float:
        """What one request and its reply cost the radio, at the mean sizes seen here: the
        device's cost of an answer when everything goes up (cloud-only)."""
        return self.profile.link.joules(self.mean_sent_bytes(), self.mean_received_bytes(), 1, 1)


def _at(history: deque[tuple[float, float]], t: float) -> tuple[float, float]:
    """The settlement at or just before ``t`` (the oldest when none is that old)."""
    found = history[0]
    for entry in history:
        if entry[0] > t:
            break
        found = entry
    return found
