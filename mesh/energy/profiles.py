"""Device and link profiles: what a CPU-second and a message cost on a device without sensors.

The compute model is the linear utilisation model (Fan, Weber and Barroso, "Power provisioning
for a warehouse-sized computer", ISCA 2007): a device draws its idle floor, plus a fixed power
for each core kept busy. A process's compute energy is its CPU time times that power per busy
core; the floor is drawn whatever the node does and is not the node's to save.

The radio model is the linear per-message model of Feeney and Nilsson ("Investigating the energy
consumption of a wireless network interface in an ad hoc networking environment", IEEE INFOCOM
2001): each message sent or received costs a fixed energy plus an energy per byte.

Every figure below names where it comes from. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mesh.errors import InvalidArgumentError


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """What moving data upstream costs the device, per message and per byte, each way."""

    name: str
    send_j_per_message: float
    send_j_per_byte: float
    receive_j_per_message: float
    receive_j_per_byte: float
    source: str

    def joules(
        self, sent_bytes: float, received_bytes: float, sent: float, received: float
    ) -> float:
        """Energy of ``sent`` and ``received`` messages carrying these bytes."""
        return (
            sent * self.send_j_per_message
            + sent_bytes * self.send_j_per_byte
            + received * self.receive_j_per_message
            + received_bytes * self.receive_j_per_byte
        )


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device's power figures: its idle floor and the power of each busy core."""

    name: str
    #: what the whole board draws idle, in watts (not the node's to save).
    idle_w: float
    #: power added by one core kept busy, in watts: a CPU-second costs this many joules.
    active_w_per_core: float
    cores: int
    link: LinkProfile
    source: str

    def compute_joules(self, cpu_seconds: float) -> float:
        return cpu_seconds * self.active_w_per_core

    def constants(self) -> dict[str, float | str]:
        """The figures as the bench and the demo write them beside their results."""
        link = self.link
        return {
            "profile": self.name,
            "idle_w": self.idle_w,
            "active_w_per_core": self.active_w_per_core,
            "cores": self.cores,
            "link": link.name,
            "send_j_per_message": link.send_j_per_message,
            "send_j_per_byte": link.send_j_per_byte,
            "receive_j_per_message": link.receive_j_per_message,
            "receive_j_per_byte": link.receive_j_per_byte,
            "device_source": self.source,
            "link_source": link.source,
        }


#: 802.11 after Feeney and Nilsson (INFOCOM 2001), point-to-point traffic: sending costs
#: 1.9 uJ/byte + 420 uJ a message, receiving 0.42 uJ/byte + 330 uJ (their linear model as
#: tabulated in T. Kunz's energy-model notes, kunz-pc.sce.carleton.ca/talks/Energy_files/
#: slide0041.htm). Their card was a 2 Mbit/s WaveLAN; a phone's 802.11n radio moves a byte for
#: about the same (Huang et al., MobiSys 2012: 283.17 mW/Mbps uplink, 2.27 uJ/byte).
WIFI = LinkProfile(
    name="wifi",
    send_j_per_message=420e-6,
    send_j_per_byte=1.9e-6,
    receive_j_per_message=330e-6,
    receive_j_per_byte=0.42e-6,
    source="Feeney & Nilsson, IEEE INFOCOM 2001 (802.11 linear model: send 1.9 uJ/B + 420 uJ, "
    "receive 0.42 uJ/B + 330 uJ)",
)

#: A wired link: an Ethernet PHY draws the same power idle as when it carries frames (the reason
#: IEEE 802.3az Energy-Efficient Ethernet was made), so its draw is in the board's idle floor and
#: a message costs the node nothing more.
ETHERNET = LinkProfile(
    name="ethernet",
    send_j_per_message=0.0,
    send_j_per_byte=0.0,
    receive_j_per_message=0.0,
    receive_j_per_byte=0.0,
    source="wired: PHY power is independent of traffic (the premise of IEEE 802.3az), so it "
    "is in the idle floor",
)

LINKS: dict[str, LinkProfile] = {link.name: link for link in (WIFI, ETHERNET)}


def _busy_profile(
    name: str, idle_w: float, busy_w: float, cores: int, link: LinkProfile, source: str
) -> DeviceProfile:
    """A device measured idle and with every core busy: each busy core adds an equal share of
    the difference."""
    return DeviceProfile(
        name=name,
        idle_w=idle_w,
        active_w_per_core=(busy_w - idle_w) / cores,
        cores=cores,
        link=link,
        source=source,
    )


#: Raspberry Pi 4 model B: 1.6 W idle and 5.0 W with all 4 cores busy (stress-ng --matrix 0),
#: measured at the wall by J. Geerling (github.com/geerlingguy/sbc-reviews issue 4): 0.85 W a
#: busy core. Its onboard radio (CYW43455) is 802.11ac.
RPI4 = _busy_profile(
    "rpi4",
    idle_w=1.6,
    busy_w=5.0,
    cores=4,
    link=WIFI,
    source="J. Geerling, sbc-reviews issue 4 (Raspberry Pi 4 model B): 1.6 W idle, 5.0 W "
    "stress-ng --matrix 0 on 4 cores",
)


def _jetson_orin_nano(budget_w: int, cores: int) -> DeviceProfile:
    """Jetson Orin Nano: NVIDIA's nvpmodel power modes cap the module at 15 W (6 cores online)
    or 7 W (4 cores online) (Jetson Linux Developer Guide, "Platform Power and Performance").
    Its floor, 2.6 W for the whole carrier board, was measured with a Joulescope on an idle dev
    kit (forums.developer.nvidia.com/t/348662). With no published CPU-only figure, a busy core
    is charged the mode's budget above the floor shared over its cores: an upper bound, since
    the budget also covers the GPU and memory."""
    return _busy_profile(
        f"jetson-orin-nano-{budget_w}w",
        idle_w=2.6,
        busy_w=float(budget_w),
        cores=cores,
        link=WIFI,
        source=f"NVIDIA nvpmodel {budget_w} W mode ({cores} cores); 2.6 W idle board (NVIDIA "
        "forum t/348662); busy core = (budget - idle) / cores, an upper bound",
    )


JETSON_ORIN_NANO_15W = _jetson_orin_nano(15, cores=6)
JETSON_ORIN_NANO_7W = _jetson_orin_nano(7, cores=4)

#: An x86 gateway: an Intel N150 mini PC (GMKtec NucBox G3 Plus), 9.3 W idle and 25 W with its
#: 4 cores busy (stress-ng --matrix 0), measured at the wall by J. Geerling (sbc-reviews issue
#: 64): 3.9 W a busy core. Wired to the site.
X86_GATEWAY = _busy_profile(
    "x86-gateway",
    idle_w=9.3,
    busy_w=25.0,
    cores=4,
    link=ETHERNET,
    source="J. Geerling, sbc-reviews issue 64 (Intel N150 mini PC): 9.3 W idle, 25 W "
    "stress-ng --matrix 0 on 4 cores",
)

PROFILES: dict[str, DeviceProfile] = {
    p.name: p for p in (RPI4, JETSON_ORIN_NANO_15W, JETSON_ORIN_NANO_7W, X86_GATEWAY)
}

#: the name that picks a profile from where the node stands (``default_profile``).
AUTO = "auto"


def default_profile(zone: str) -> DeviceProfile:
    """A node in the device zone is taken for a Raspberry Pi 4, any other for an x86 gateway."""
    return RPI4 if zone == "device" else X86_GATEWAY


def profile_named(name: str, zone: str = "device") -> DeviceProfile:
    """A shipped profile by name (``auto``: by zone); raises ``InvalidArgumentError``."""
    if name == AUTO:
        return default_profile(zone)
    profile = PROFILES.get(name)
    if profile is None:
        raise InvalidArgumentError(
            f"no device profile {name!r}; the shipped ones are {sorted(PROFILES)} (or auto)"
        )
    return profile


def link_named(name: str) -> LinkProfile:
    link = LINKS.get(name)
    if link is None:
        raise InvalidArgumentError(
            f"no link profile {name!r}; the shipped ones are {sorted(LINKS)}"
        )
    return link


def with_overrides(profile: DeviceProfile, **figures: float | LinkProfile | None) -> DeviceProfile:
    """``profile`` with the figures given (None keeps the profile's); the name says so."""
    changes = {key: value for key, value in figures.items() if value is not None}
    if not changes:
        return profile
    return replace(profile, name=f"{profile.name}+custom", **changes)  # type: ignore[arg-type]
