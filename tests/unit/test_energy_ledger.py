"""The energy ledger, budgets, profiles and sensors: pure, with fake clocks and a fake sysfs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from mesh.energy.budget import BatteryBudget, PowerBudget
from mesh.energy.coalesce import Coalescer
from mesh.energy.ledger import NODE_ONLY, CallMeter, EnergyLedger
from mesh.energy.profiles import (
    ETHERNET,
    PROFILES,
    RPI4,
    WIFI,
    X86_GATEWAY,
    profile_named,
)
from mesh.energy.sensors import (
    BatterySensor,
    Ina3221Sensor,
    LevelFile,
    RaplSensor,
    SensorSuite,
    probe,
)
from mesh.energy.settings import EnergySettings
from mesh.errors import InvalidArgumentError
from mesh.wire import (
    NodeStatus,
    PowerStatus,
    PowerStepEvent,
    decode_node_status,
    decode_power_step,
    encode_node_status,
    encode_power_step,
)
from mesh.wire.codec import packb


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- profiles --------------------------------------------------------------------------------


def test_shipped_profiles_carry_their_cited_figures() -> None:
    assert RPI4.active_w_per_core == pytest.approx(0.85)  # (5.0 - 1.6) W / 4 cores
    assert X86_GATEWAY.active_w_per_core == pytest.approx(3.925)  # (25 - 9.3) W / 4 cores
    assert PROFILES["jetson-orin-nano-15w"].cores == 6
    assert PROFILES["jetson-orin-nano-7w"].active_w_per_core == pytest.approx(1.1)
    assert all(p.source and p.link.source for p in PROFILES.values())
    assert WIFI.joules(100, 50, 1, 1) == pytest.approx(420e-6 + 190e-6 + 330e-6 + 21e-6)
    assert ETHERNET.joules(10_000, 10_000, 5, 5) == 0.0


def test_auto_picks_by_zone_and_unknown_names_are_refused() -> None:
    assert profile_named("auto", "device") is RPI4
    assert profile_named("auto", "site") is X86_GATEWAY
    with pytest.raises(InvalidArgumentError, match="shipped ones"):
        profile_named("pi5")
    with pytest.raises(ValidationError, match="profile must be"):
        EnergySettings(profile="pi5")


def test_settings_override_a_profile_figure_by_figure() -> None:
    device = EnergySettings(profile="rpi4", active_w_per_core=2.0, send_j_per_message=0.01).device(
        "device"
    )
    assert device.active_w_per_core == 2.0 and device.idle_w == RPI4.idle_w
    assert device.link.send_j_per_message == 0.01
    assert device.link.send_j_per_byte == WIFI.send_j_per_byte
    assert device.name == "rpi4+custom"
    assert EnergySettings().device("cloud") is X86_GATEWAY


# --- the ledger ------------------------------------------------------------------------------


def test_a_call_meter_times_one_call_in_n_and_estimates_the_rest() -> None:
    meter = CallMeter(every=4)
    timed = [meter.wants_timing() for _ in range(8)]
    assert timed == [True, False, False, False, True, False, False, False]
    meter.timed_call(0.001)
    meter.timed_call(0.003)
    meter.worker_call(0.010)
    assert meter.take() == pytest.approx(8 * 0.002 + 0.010)
    assert meter.take() == 0.0


def test_settling_prices_cpu_and_radio_and_shares_the_rest_by_answers() -> None:
    cpu, clock = Clock(), Clock()
    ledger = EnergyLedger(RPI4, sample_every=1, cpu_clock=cpu, clock=clock)
    meter = ledger.meter("digits")
    meter.wants_timing()
    meter.timed_call(0.2)
    ledger.exchanged("digits", 400, 300)
    cpu.now, clock.now = 1.0, 10.0
    ledger.settle({"digits": 90, "other": 10})
    digits, other = ledger.models["digits"], ledger.models["other"]
    assert digits.model_j == pytest.approx(0.2 * 0.85)
    # the other 0.8 CPU-seconds go by answers: 90% and 10%
    assert digits.node_j == pytest.approx(0.8 * 0.85 * 0.9)
    assert other.node_j == pytest.approx(0.8 * 0.85 * 0.1)
    assert digits.radio_j == pytest.approx(WIFI.joules(400, 300, 1, 1))
    assert ledger.total_j == pytest.approx(0.85 + WIFI.joules(400, 300, 1, 1))
    assert ledger.watts(30.0) == pytest.approx(ledger.total_j / 10.0)
    assert ledger.joules_per_answer() == pytest.approx(ledger.total_j / 100)
    assert ledger.upstream_joules() == pytest.approx(WIFI.joules(400, 300, 1, 1))


def test_cpu_with_no_answer_yet_goes_to_the_node_itself() -> None:
    cpu, clock = Clock(), Clock()
    ledger = EnergyLedger(RPI4, cpu_clock=cpu, clock=clock)
    cpu.now, clock.now = 0.5, 1.0
    ledger.settle({})
    assert ledger.models[NODE_ONLY].node_j == pytest.approx(0.5 * 0.85)


def test_a_coalesced_escalation_counts_its_share_of_a_message_and_a_lost_one_the_mean() -> None:
    cpu, clock = Clock(), Clock()
    ledger = EnergyLedger(RPI4, cpu_clock=cpu, clock=clock)
    for _ in range(4):
        ledger.exchanged("digits", 500, 200, sent=0.25)
    ledger.unanswered("digits")
    clock.now = 1.0
    ledger.settle({"digits": 4})
    radio = ledger.models["digits"].radio
    assert (radio.sent, radio.received) == (2.0, 4.0)
    assert radio.sent_bytes == 2000 + 0  # the mean is of what was settled before: none yet
    assert ledger.models["digits"].radio_j == pytest.approx(WIFI.joules(2000, 800, 2.0, 4.0))


def test_the_window_power_follows_recent_settlements() -> None:
    cpu, clock = Clock(), Clock()
    ledger = EnergyLedger(RPI4, cpu_clock=cpu, clock=clock)
    for second in range(1, 21):
        clock.now = float(second)
        cpu.now += 0.1 if second <= 10 else 0.5
        ledger.settle({"digits": second})
    assert ledger.watts(5.0) == pytest.approx(0.5 * 0.85)
    assert ledger.watts(20.0) == pytest.approx((1.0 + 5.0) * 0.85 / 20.0)  # from the start


def test_a_compute_sensor_reprices_the_cpu_second() -> None:
    cpu, clock = Clock(), Clock()
    ledger = EnergyLedger(RPI4, cpu_clock=cpu, clock=clock)
    ledger.calibrate(3.0, "rapl:package-0")
    cpu.now, clock.now = 1.0, 1.0
    ledger.settle({"digits": 1})
    assert ledger.total_j == pytest.approx(3.0) and ledger.compute_source == "rapl:package-0"
    ledger.calibrate(None)
    assert ledger.w_per_core == RPI4.active_w_per_core


# --- budgets ---------------------------------------------------------------------------------


def test_a_battery_budget_is_what_is_left_over_the_time_left_less_the_floor() -> None:
    battery = BatteryBudget(capacity_j=36_000.0, target_s=10_000.0)
    budget = PowerBudget(battery=battery)
    assert budget.node_w(elapsed_s=0, idle_w=1.5, level_percent=None) == pytest.approx(2.1)
    # half spent at a fifth of the time: 18 kJ over 8,000 s, less the floor
    assert budget.node_w(elapsed_s=2000, idle_w=1.5, spent_j=18_000) == pytest.approx(0.75)
    # a level reported (the battery was charged back to 80%) replaces the estimate
    assert budget.node_w(elapsed_s=2000, idle_w=1.5, level_percent=80) == pytest.approx(2.1)
    # a floor over what the battery allows leaves the node nothing, not less
    assert budget.node_w(elapsed_s=0, idle_w=10.0) == 0.0
    assert PowerBudget(watts=0.5).node_w(elapsed_s=0, idle_w=1.5) == 0.5


def test_budget_settings_take_one_of_watts_and_battery() -> None:
    with pytest.raises(ValidationError, match="either watts or battery"):
        EnergySettings.model_validate({"budget": {}})
    settings = EnergySettings.model_validate(
        {"budget": {"battery": {"capacity_wh": 10, "target_hours": 2}}}
    )
    assert settings.budget is not None
    battery = settings.budget.budget().battery
    assert battery is not None and battery.capacity_j == 36_000 and battery.target_s == 7200
    with pytest.raises(ValidationError, match="hold_s"):
        EnergySettings.model_validate({"governor": {"hold_s": 1, "control_s": 2}})


# --- sensors ---------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_probe_finds_rapl_packages_batteries_and_ina3221_rails(tmp_path: Path) -> None:
    rapl = tmp_path / "class/powercap/intel-rapl:0"
    _write(rapl / "name", "package-0")
    _write(rapl / "energy_uj", "1000000")
    _write(rapl / "max_energy_range_uj", "262143328850")
    _write(tmp_path / "class/powercap/intel-rapl:0:0/energy_uj", "5")  # a subzone: not a package
    bat = tmp_path / "class/power_supply/BAT0"
    _write(bat / "type", "Battery")
    _write(bat / "capacity", "57")
    _write(bat / "power_now", "2500000")
    _write(tmp_path / "class/power_supply/AC/type", "Mains")
    hwmon = tmp_path / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for channel, label, mv, ma in ((1, "VDD_IN", 5000, 1200), (2, "VDD_CPU_GPU_CV", 5000, 300)):
        _write(hwmon / f"in{channel}_label", label)
        _write(hwmon / f"in{channel}_input", str(mv))
        _write(hwmon / f"curr{channel}_input", str(ma))
    found = probe(tmp_path)
    assert [s.name for s in found] == [
        "rapl:package-0", "battery:BAT0", "ina3221:VDD_IN", "ina3221:VDD_CPU_GPU_CV",
    ]  # fmt: skip
    assert [s.kind for s in found] == ["compute", "battery", "device", "compute"]
    battery = found[1].read()
    assert (battery.battery_percent, battery.power_w) == (57.0, 2.5)
    assert found[2].read().power_w == pytest.approx(6.0)


def test_this_machine_is_probed_without_error() -> None:
    found = probe(Path("/sys"))
    assert all(s.kind in ("compute", "device", "battery") for s in found)


def test_rapl_counts_across_a_wrap(tmp_path: Path) -> None:
    _write(tmp_path / "max_energy_range_uj", "1000000")
    _write(tmp_path / "energy_uj", "900000")
    sensor = RaplSensor(tmp_path)
    assert sensor.read().energy_j == 0.0
    _write(tmp_path / "energy_uj", "100000")
    assert sensor.read().energy_j == pytest.approx(0.2)


def test_a_battery_level_comes_from_energy_or_charge_when_capacity_is_missing(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "energy_now", "30000000")
    _write(tmp_path / "energy_full", "40000000")
    _write(tmp_path / "current_now", "-500000")
    _write(tmp_path / "voltage_now", "12000000")
    reading = BatterySensor(tmp_path).read()
    assert reading.battery_percent == 75.0 and reading.power_w == pytest.approx(6.0)
    assert LevelFile(tmp_path / "missing").read().battery_percent is None


def test_a_suite_prices_a_cpu_second_from_a_compute_sensor_over_busy_time(tmp_path: Path) -> None:
    hwmon = tmp_path / "hwmon"
    _write(hwmon / "in1_input", "5000")
    _write(hwmon / "curr1_input", "400")  # 2 W
    proc = tmp_path / "proc"
    _write(proc / "stat", "cpu  100 0 100 1000 0 0 0 0 0 0")
    suite = SensorSuite([Ina3221Sensor(hwmon, 1, "VDD_CPU")], proc)
    assert suite.sample(0.0).w_per_core is None
    # 10 s at 2 W = 20 J over 4 busy CPU-seconds (400 ticks at 100 Hz)
    _write(proc / "stat", "cpu  300 0 300 5000 0 0 0 0 0 0")
    sample = suite.sample(10.0)
    assert sample.w_per_core == pytest.approx(20.0 / 4.0)
    assert sample.compute_source == "ina3221:VDD_CPU"


# --- the coalescer ---------------------------------------------------------------------------


async def test_escalations_held_together_go_at_the_earliest_deadline_with_their_shares() -> None:
    coalescer = Coalescer()
    loop = asyncio.get_running_loop()
    started = loop.time()
    shares = await asyncio.gather(
        coalescer.hold(0.05, 1.0), coalescer.hold(0.05, 0.02), coalescer.hold(0.05, 1.0)
    )
    assert shares == [pytest.approx(1 / 3)] * 3
    assert loop.time() - started < 0.05  # the second one's budget cut the wait
    assert await coalescer.hold(0.05, -1.0) == 1.0  # no time to wait: alone, at once
    assert coalescer.groups == 1 and coalescer.held == 3


# --- the wire --------------------------------------------------------------------------------

POWER = PowerStatus(
    profile="rpi4", watts=0.031, window_s=10.0, budget_w=0.03, steps=["audits", "drift"],
    degrade_share=0.2, compute_j=1.5, radio_j=2.5, answers=400, joules_per_answer=0.01,
    upstream_j=0.0015, battery_percent=55.0, sensors=["battery:BAT0"],
)  # fmt: skip


def test_a_status_carries_its_power_and_an_older_one_none() -> None:
    status = NodeStatus(node="edge-0", tier="edge", time=1.0, power=POWER)
    assert decode_node_status(encode_node_status(status)).power == POWER
    assert decode_node_status(encode_node_status(NodeStatus("e", "edge"))).power is None


def test_a_power_step_round_trips_and_bad_ones_are_refused() -> None:
    event = PowerStepEvent(
        "edge-0", "edge", "coalesce", True, 0.05, 0.03, None, ["audits", "coalesce"], 0.0, 1.0
    )
    assert decode_power_step(encode_power_step(event)) == event
    bad = {"v": 1, "kind": "power_step", "node": "e", "tier": "edge", "step": "x",
           "applied": True, "watts": float("nan"), "time": 1.0}  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="finite"):
        decode_power_step(packb(bad))
    with pytest.raises(InvalidArgumentError, match="steps"):
        decode_power_step(packb({**bad, "watts": 1.0, "steps": ["a"] * 100}))
