"""Power sensors a Linux device may have, each read through one small interface (``Sensor``):

- ``RaplSensor``: the CPU package's energy counter, ``/sys/class/powercap/intel-rapl:N``
  (``energy_uj``, wrapping at ``max_energy_range_uj``; AMD processors expose it there too);
- ``BatterySensor``: a battery under ``/sys/class/power_supply`` (``type`` Battery): its level
  (``capacity`` in percent, or ``energy_now``/``energy_full``) and its draw (``power_now``, or
  ``current_now`` times ``voltage_now``);
- ``Ina3221Sensor``: one rail of a TI INA3221 monitor, as Jetson boards expose them under hwmon
  (``in<N>_label``, ``in<N>_input`` in mV, ``curr<N>_input`` in mA): ``VDD_IN`` is the whole
  module, a rail whose label names the CPU measures compute;
- ``LevelFile``: a battery level in percent written to a file by whatever manages the battery.

``SensorSuite`` probes a sysfs tree for them and turns their readings into what the ledger and
the governor use: the power a busy CPU-second really costs (the compute sensor's energy over the
CPU time every process was busy, from ``/proc/stat``, as Scaphandre attributes host power), the
device's measured draw, and the battery level. Every read is a blocking file read: the node
calls ``SensorSuite.sample`` off its event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("mesh.energy")

_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Reading:
    #: a running energy counter, in joules.
    energy_j: float | None = None
    #: an instantaneous power, in watts.
    power_w: float | None = None
    battery_percent: float | None = None


class Sensor(Protocol):
    #: what it is, for the status and the logs (``rapl:package-0``, ``battery:BAT0``...).
    name: str
    #: ``compute`` (measures the CPU), ``device`` (the whole device) or ``battery``.
    kind: str

    def read(self) -> Reading: ...


def _number(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class RaplSensor:
    kind = "compute"

    def __init__(self, zone: Path) -> None:
        self.zone = zone
        self.name = f"rapl:{_text(zone / 'name') or zone.name}"
        self._range = _number(zone / "max_energy_range_uj") or 0.0
        self._last: float | None = None
        self._total_j = 0.0

    def read(self) -> Reading:
        raw = _number(self.zone / "energy_uj")
        if raw is None:
            return Reading()
        if self._last is not None:
            delta = raw - self._last
            if delta < 0 and self._range:
                delta += self._range  # the counter wrapped
            self._total_j += max(0.0, delta) / 1e6
        self._last = raw
        return Reading(energy_j=self._total_j)


class BatterySensor:
    kind = "battery"

    def __init__(self, supply: Path) -> None:
        self.supply = supply
        self.name = f"battery:{supply.name}"

    def read(self) -> Reading:
        s = self.supply
        percent = _number(s / "capacity")
        if percent is None:
            now, full = _number(s / "energy_now"), _number(s / "energy_full")
            if now is None or not full:
                now, full = _number(s / "charge_now"), _number(s / "charge_full")
            percent = 100.0 * now / full if now is not None and full else None
        power = _number(s / "power_now")
        if power is not None:
            watts: float | None = power / 1e6
        else:
            current, volts = _number(s / "current_now"), _number(s / "voltage_now")
            watts = abs(current) * volts / 1e12 if current is not None and volts else None
        return Reading(power_w=watts, battery_percent=percent)


class Ina3221Sensor:
    def __init__(self, hwmon: Path, channel: int, label: str) -> None:
        self.hwmon = hwmon
        self.channel = channel
        self.name = f"ina3221:{label}"
        self.kind = "compute" if "CPU" in label.upper() else "device"

    def read(self) -> Reading:
        millivolts = _number(self.hwmon / f"in{self.channel}_input")
        milliamps = _number(self.hwmon / f"curr{self.channel}_input")
        if millivolts is None or milliamps is None:
            return Reading()
        return Reading(power_w=millivolts * milliamps / 1e6)


class LevelFile:
    kind = "battery"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"level:{path}"

    def read(self) -> Reading:
        return Reading(battery_percent=_number(self.path))


def probe(root: Path) -> list[Sensor]:
    """Every sensor found under the sysfs tree ``root`` (``/sys`` on a device)."""
    found: list[Sensor] = []
    powercap = root / "class" / "powercap"
    with contextlib.suppress(OSError):
        for zone in sorted(powercap.glob("intel-rapl:*")):
            # top-level zones only (intel-rapl:0, not intel-rapl:0:0): the packages
            if zone.name.count(":") == 1 and (zone / "energy_uj").exists():
                found.append(RaplSensor(zone))
    supplies = root / "class" / "power_supply"
    with contextlib.suppress(OSError):
        for supply in sorted(supplies.iterdir()):
            if _text(supply / "type") == "Battery":
                found.append(BatterySensor(supply))
    found.extend(_ina3221(root))
    return found


def _ina3221(root: Path) -> list[Sensor]:
    hwmons: list[Path] = []
    with contextlib.suppress(OSError):
        hwmons += [h for h in sorted((root / "class" / "hwmon").glob("hwmon*"))
                   if _text(h / "name") == "ina3221"]  # fmt: skip
    with contextlib.suppress(OSError):
        hwmons += sorted((root / "bus" / "i2c" / "drivers" / "ina3221").glob("*/hwmon/hwmon*"))
    sensors: list[Sensor] = []
    seen: set[str] = set()
    for hwmon in hwmons:
        for channel in (1, 2, 3):
            label = _text(hwmon / f"in{channel}_label")
            if label and label not in seen and (hwmon / f"curr{channel}_input").exists():
                seen.add(label)
                sensors.append(Ina3221Sensor(hwmon, channel, label))
    return sensors


def busy_cpu_seconds(proc: Path) -> float | None:
    """CPU time every process of the machine spent busy so far (``/proc/stat``'s first line:
    all but idle and iowait), in seconds."""
    try:
        first = (proc / "stat").read_text().split("\n", 1)[0].split()
        ticks = [int(v) for v in first[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    busy = sum(ticks[:8]) - idle
    return busy / _USER_HZ


@dataclass(frozen=True, slots=True)
class SensorSample:
    #: joules per busy CPU-second, measured by a compute sensor over the last interval.
    w_per_core: float | None = None
    compute_source: str = "profile"
    #: the whole device's draw, in watts.
    device_w: float | None = None
    battery_percent: float | None = None


class SensorSuite:
    """The sensors a node reads, and what their readings say between two samples."""

    def __init__(self, sensors: list[Sensor], proc: Path = Path("/proc")) -> None:
        self.sensors = sensors
        self.proc = proc
        self._last: dict[str, tuple[float, float, float]] = {}
        self._busy: float | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sensors]

    def sample(self, now: float) -> SensorSample:
        busy = busy_cpu_seconds(self.proc)
        busy_delta = busy - self._busy if busy is not None and self._busy is not None else None
        self._busy = busy
        w_per_core: float | None = None
        source = "profile"
        device_w: float | None = None
        percent: float | None = None
        for sensor in self.sensors:
            try:
                reading = sensor.read()
            except Exception as exc:  # a sensor that fails is left out of this sample
                log.debug("sensor %s unreadable: %r", sensor.name, exc)
                continue
            if reading.battery_percent is not None and percent is None:
                percent = reading.battery_percent
            joules = self._energy(sensor.name, now, reading)
            if (
                sensor.kind == "compute"
                and joules is not None
                and busy_delta
                and w_per_core is None
            ):
                w_per_core, source = joules / busy_delta, sensor.name
            elif sensor.kind in ("device", "battery") and device_w is None:
                device_w = reading.power_w
        return SensorSample(w_per_core, source, device_w, percent)

    def _energy(self, name: str, now: float, reading: Reading) -> float | None:
        """Joules since the last sample: from a counter, or a power times the interval."""
        last = self._last.get(name)
        counter = reading.energy_j
        power = reading.power_w
        if counter is None and power is None:
            return None
        running = counter if counter is not None else 0.0
        if counter is None and last is not None:
            running = last[1] + (power or 0.0) * (now - last[0])
        self._last[name] = (now, running, power or 0.0)
        if last is None:
            return None
        return max(0.0, running - last[1])
