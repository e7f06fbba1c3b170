"""The calibration states each threshold's device energy per answer beside its accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.models.calibrate import (
    CalibrationResult,
    TierEnergy,
    TierOutputs,
    calibrate_tiers,
    run_cascade,
    sweep,
)


def _tiers() -> tuple[list[TierOutputs], np.ndarray]:
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    edge = TierOutputs(
        confidence=np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.51]),
        prediction=np.array([0, 1, 0, 1, 1, 0, 1, 0]),
        novel=np.zeros(8, dtype=bool),
    )
    top = TierOutputs(np.ones(8), y.copy(), np.zeros(8, dtype=bool))
    return [edge, top], y


def test_energy_per_answer_is_the_model_for_every_row_and_the_radio_for_those_sent_up() -> None:
    tiers, y = _tiers()
    energy = TierEnergy(device="rpi4", model_j=0.001, escalation_j=0.010)
    outcome = run_cascade(tiers, [0.85])  # the edge keeps 3 of 8 rows
    assert energy.per_answer(outcome, 0) == pytest.approx((8 * 0.001 + 5 * 0.010) / 8)
    curve = sweep(tiers, [1.01], 0, y, energy=energy)
    lowest, highest = min(curve, key=lambda p: p.threshold), max(curve, key=lambda p: p.threshold)
    assert lowest.joules_per_answer == pytest.approx(0.001)  # nothing sent up
    assert highest.joules_per_answer == pytest.approx(0.011)  # everything sent up
    # a lower threshold sends less up: with a costly radio, energy falls as the share rises
    ordered = sorted(curve, key=lambda p: p.share_local)
    joules = [p.joules_per_answer for p in ordered]
    assert joules == sorted(joules, reverse=True)


def test_the_calibration_summary_and_table_state_the_energy_beside_the_accuracy() -> None:
    tiers, y = _tiers()
    energy = TierEnergy(device="rpi4", model_j=0.001, escalation_j=0.010)
    [edge] = calibrate_tiers(tiers, ["edge", "cloud"], y, max_drop=0.5, energy=[energy])
    assert edge.chosen.joules_per_answer is not None
    result = CalibrationResult(1.0, 1.0, [edge], energy={"edge": energy})
    assert "mJ an answer at this threshold" in result.summary()
    assert "sending every request up with no model here 10.0000 mJ" in result.summary()
    assert result.curve_table("edge").splitlines()[0].endswith("mJ_per_answer")
    plain = CalibrationResult(1.0, 1.0, calibrate_tiers(tiers, ["edge", "cloud"], y, 0.5))
    assert "mJ" not in plain.summary() and "mJ" not in plain.curve_table("edge")
