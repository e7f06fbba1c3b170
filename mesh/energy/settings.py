"""The energy settings of a node (``energy:`` in its settings file, ``MESH_ENERGY__*``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesh.energy.budget import BatteryBudget, PowerBudget
from mesh.energy.governor import LADDER, GovernorConfig, Step
from mesh.energy.profiles import (
    AUTO,
    LINKS,
    PROFILES,
    DeviceProfile,
    link_named,
    profile_named,
    with_overrides,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatterySettings(_Section):
    """A battery the node must make last."""

    capacity_wh: float = Field(gt=0)
    """Energy the full battery holds, in watt-hours."""
    target_hours: float = Field(gt=0)
    """How long the battery must last, from when the node starts."""
    level_path: Path | None = None
    """A file holding the battery level in percent: a ``/sys/class/power_supply/*/capacity``
    file, or one a battery manager writes (the level reported to the node). Default: the first
    battery found under ``sysfs_root``; with none, the level is the start level less what the
    idle floor and the ledger have spent."""
    start_percent: float = Field(100.0, ge=0, le=100)
    """The level at start when no level is read."""


class BudgetSettings(_Section):
    """The node's power budget: set one of ``watts`` and ``battery``."""

    watts: float | None = Field(None, ge=0)
    """Average power the node's ledger (compute and radio, not the idle floor) may draw."""
    battery: BatterySettings | None = None

    @model_validator(mode="after")
    def _one(self) -> BudgetSettings:
        if (self.watts is None) == (self.battery is None):
            raise ValueError("a power budget is either watts or battery: set one of them")
        return self

    def budget(self) -> PowerBudget:
        battery = self.battery
        return PowerBudget(
            watts=self.watts,
            battery=None
            if battery is None
            else BatteryBudget(
                capacity_j=battery.capacity_wh * 3600.0,
                target_s=battery.target_hours * 3600.0,
                start_percent=battery.start_percent,
            ),
        )


class GovernorSettings(_Section):
    """The ladder of savings the governor takes while the node runs over its budget (in order,
    cheapest in accuracy first) and the thresholds it takes and gives them back by."""

    ladder: list[Step] = Field(default_factory=lambda: list(LADDER))
    """Steps in the order they are taken: ``audits`` (lower the audit rate), ``drift`` (pause
    drift sampling), ``coalesce`` (send escalations up together), ``events`` (defer event
    work without a deadline), ``degrade`` (answer unsure requests here, degraded ``power``;
    last if present). Leave a step out to never take it."""
    over: float = Field(0.0, ge=0)
    """A step is taken while the power is over the budget by more than this share."""
    hold_s: float = Field(3.0, gt=0)
    """Seconds between two changes of the ladder, so each one's effect shows in the power."""
    control_s: float = Field(2.0, gt=0)
    """The governor decides on the average power over this many seconds."""
    release_margin: float = Field(0.05, ge=0, lt=1)
    """A step is given back when the power plus what it saved is this share under budget."""
    audit_scale: float = Field(0.1, ge=0, le=1)
    """The ``audits`` step multiplies every model's audit rate by this."""
    coalesce_ms: float = Field(20.0, gt=0)
    """The ``coalesce`` step holds an escalation up to this long (never past what its budget
    leaves after the upstream's p95) so that those held go up in one write."""
    events_defer_s: float = Field(2.0, gt=0)
    """The ``events`` step makes event fetches wait up to this long for a full batch, for the
    models whose events' budgets leave room for it."""
    degrade_gain: float = Field(0.3, gt=0, le=2)
    """How fast the degraded share follows the excess: its change per second when the power
    is over budget by as much as it was when the ``degrade`` step was taken."""

    @model_validator(mode="after")
    def _order(self) -> GovernorSettings:
        self.config()
        if self.hold_s < self.control_s:
            raise ValueError("hold_s must be at least control_s: a step's effect must show")
        return self

    def config(self) -> GovernorConfig:
        return GovernorConfig(
            ladder=tuple(self.ladder),
            over=self.over,
            hold_s=self.hold_s,
            release_margin=self.release_margin,
            audit_scale=self.audit_scale,
            coalesce_s=self.coalesce_ms / 1000.0,
            events_defer_s=self.events_defer_s,
            degrade_gain=self.degrade_gain,
        )


class EnergySettings(_Section):
    """The node's energy ledger, its sensors and its power budget (``docs/energy.md``)."""

    enabled: bool = True
    """Keep the ledger (and govern the budget, when one is set)."""
    profile: str = AUTO
    """Device profile: ``rpi4``, ``jetson-orin-nano-15w``, ``jetson-orin-nano-7w``,
    ``x86-gateway``, or ``auto`` (a Raspberry Pi 4 in the device zone, else the x86 gateway)."""
    idle_w: float | None = Field(None, ge=0)
    """The board's idle draw in watts, in place of the profile's."""
    active_w_per_core: float | None = Field(None, ge=0)
    """Power of one busy core in watts (joules per CPU-second), in place of the profile's."""
    link: str | None = None
    """The link upstream, in place of the profile's: ``wifi`` or ``ethernet``."""
    send_j_per_message: float | None = Field(None, ge=0)
    """Energy of one message sent upstream, in joules, in place of the link's."""
    send_j_per_byte: float | None = Field(None, ge=0)
    """Energy of one byte sent upstream, in joules."""
    receive_j_per_message: float | None = Field(None, ge=0)
    """Energy of one message received from upstream, in joules."""
    receive_j_per_byte: float | None = Field(None, ge=0)
    """Energy of one byte received from upstream, in joules."""
    sensors: bool = True
    """Read the device's power sensors (RAPL, a battery, INA3221 rails) when it has them."""
    sysfs_root: Path = Path("/sys")
    """Where the sensors are looked for."""
    proc_root: Path = Path("/proc")
    """Where the machine's CPU times are read (to price a CPU-second from a compute sensor)."""
    tick_s: float = Field(1.0, gt=0)
    """Seconds between two settlements of the ledger (and decisions of the governor)."""
    window_s: float = Field(10.0, gt=0)
    """The window the node's average power is reported over."""
    sample_every: int = Field(8, ge=1)
    """Model calls run on the event loop are timed one in this many (a clock read costs about
    a microsecond); worker calls are all timed."""
    budget: BudgetSettings | None = None
    """The node's power budget; none: the ledger only counts."""
    governor: GovernorSettings = Field(default_factory=GovernorSettings)

    @model_validator(mode="after")
    def _names(self) -> EnergySettings:
        if self.profile != AUTO and self.profile not in PROFILES:
            raise ValueError(f"profile must be auto or one of {sorted(PROFILES)}")
        if self.link is not None and self.link not in LINKS:
            raise ValueError(f"link must be one of {sorted(LINKS)}")
        return self

    def device(self, zone: str) -> DeviceProfile:
        """The profile these settings describe, for a node in ``zone``."""
        profile = profile_named(self.profile, zone)
        link = link_named(self.link) if self.link is not None else profile.link
        link_figures = {
            "send_j_per_message": self.send_j_per_message,
            "send_j_per_byte": self.send_j_per_byte,
            "receive_j_per_message": self.receive_j_per_message,
            "receive_j_per_byte": self.receive_j_per_byte,
        }
        changed = {k: v for k, v in link_figures.items() if v is not None}
        if changed:
            link = replace(link, name=f"{link.name}+custom", source="settings", **changed)
        return with_overrides(
            profile,
            idle_w=self.idle_w,
            active_w_per_core=self.active_w_per_core,
            link=link if link is not profile.link else None,
        )
