"""What a tier's device spends, measured for the calibration: one row through its model (the
thread's CPU time of single-row runs, priced on its device profile) and one escalation (a request
and its reply as the wire encodes them, over the device's link)."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from mesh import wire
from mesh.energy.profiles import DeviceProfile, default_profile, profile_named
from mesh.models.calibrate import TierEnergy
from mesh.models.session import LoadedModel

#: single-row runs timed for a model's CPU time per row.
ROWS = 200


def device_of(tier: str, name: str | None) -> DeviceProfile:
    zone = "device" if tier == "edge" else "site"
    return profile_named(name, zone) if name is not None else default_profile(zone)


def cpu_seconds_per_row(model: LoadedModel, x: npt.NDArray[np.float32]) -> float:
    names = [model.manifest.scored_output]
    rows = [x[i : i + 1] for i in range(min(len(x), ROWS))]
    for row in rows[:10]:
        model.session.run(names, {model.input_name: row})
    started = time.thread_time()
    for row in rows:
        model.session.run(names, {model.input_name: row})
    return (time.thread_time() - started) / max(len(rows), 1)


def escalation_bytes(
    model: LoadedModel, upstream: LoadedModel, row: npt.NDArray[np.float32]
) -> tuple[int, int]:
    """The request a tier sends up for one row, and the reply it gets, as encoded on the wire."""
    request = wire.InferRequest(
        id="0" * 26, model=model.manifest.name, inputs={model.input_name: row},
        budget_ms=1000.0, hops=1,
    )  # fmt: skip
    outputs = upstream.session.run(None, {upstream.input_name: row})
    names = [o.name for o in upstream.session.get_outputs()]
    answer = dict(zip(names, (np.asarray(v) for v in outputs), strict=True))
    scored = np.asarray(answer.get(upstream.manifest.scored_output, outputs[0]))
    m = upstream.manifest
    response = wire.InferResponse(
        request.id, m.name, m.version, m.tier_hint, f"{m.tier_hint}-0", answer,
        [int(scored.argmax())], float(scored.max()), m.confidence,
        [wire.Hop(m.tier_hint, f"{m.tier_hint}-0", "answered", 1.0, m.version, 1.0)],
    )  # fmt: skip
    return len(wire.encode_request(request)), len(wire.encode_response(response))


def tier_energy(
    model: LoadedModel,
    upstream: LoadedModel,
    x: npt.NDArray[np.float32],
    device_name: str | None = None,
) -> TierEnergy:
    device = device_of(model.manifest.tier_hint, device_name)
    sent, received = escalation_bytes(model, upstream, x[:1])
    return TierEnergy(
        device=device.name,
        model_j=device.compute_joules(cpu_seconds_per_row(model, x)),
        escalation_j=device.link.joules(sent, received, 1, 1),
    )
