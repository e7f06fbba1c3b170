"""A node's power budget: a plain average power, or what a battery allows. Pure.

A battery of ``capacity`` asked to last ``target`` from when the node started allows, at any
moment, what is left in it spread over the time left: ``remaining / time_left``. The board's
idle floor (``DeviceProfile.idle_w``) is drawn whatever the node does, so the node's own budget
is that power less the floor; the node's ledger (compute and radio) is held to it.

What is left is read from the device (a battery level in percent, from ``/sys/class/
power_supply`` or a file a battery manager writes) when it can be; otherwise it is the capacity
less what the floor and the ledger have spent since the start. A level reported higher (the
battery was charged) raises the budget at once.
"""

from __future__ import annotations

from dataclasses import dataclass

#: past this share of its target lifetime a battery's horizon stops shrinking: otherwise the
#: budget would grow without bound as the target approaches.
MIN_HORIZON_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class BatteryBudget:
    capacity_j: float
    target_s: float
    #: the level at start when none is read, in percent.
    start_percent: float = 100.0

    def remaining_j(self, level_percent: float | None, spent_j: float) -> float:
        if level_percent is not None:
            return max(0.0, min(level_percent, 100.0)) / 100.0 * self.capacity_j
        return max(0.0, self.start_percent / 100.0 * self.capacity_j - spent_j)

    def device_w(self, elapsed_s: float, level_percent: float | None, spent_j: float) -> float:
        """Average power the whole device may draw from now on to last its target."""
        left_s = max(self.target_s - elapsed_s, MIN_HORIZON_SHARE * self.target_s)
        return self.remaining_j(level_percent, spent_j) / left_s


@dataclass(frozen=True, slots=True)
class PowerBudget:
    """One of: ``watts`` (an average power for the node) or ``battery``."""

    watts: float | None = None
    battery: BatteryBudget | None = None

    def node_w(
        self,
        *,
        elapsed_s: float,
        idle_w: float,
        level_percent: float | None = None,
        spent_j: float = 0.0,
    ) -> float:
        """The node's own budget in watts now. ``spent_j`` is what the device spent since the
        start (floor and ledger), used when no battery level is read."""
        if self.battery is None:
            return max(0.0, self.watts or 0.0)
        device = self.battery.device_w(elapsed_s, level_percent, spent_j)
        return max(0.0, device - idle_w)
