"""Issue 4's done-when figures, measured on the held-out test split of the demo build."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.models.evaluate import evaluate_cascade


@pytest.fixture(scope="module")
def figures(demo: DemoArtifacts) -> dict[str, Any]:
    result = evaluate_cascade(demo)
    print(json.dumps(result, indent=2))
    return result


def test_at_least_85_percent_answered_at_the_edge(figures: dict[str, Any]) -> None:
    assert figures["share_at_edge"] >= 0.85


def test_cascade_loses_at_most_half_a_point_against_cloud_only(
    figures: dict[str, Any],
) -> None:
    assert figures["cascade_accuracy"] >= figures["cloud_only_accuracy"] - 0.005


def test_upstream_bytes_at_most_20_percent_of_cloud_only(figures: dict[str, Any]) -> None:
    assert figures["upstream_bytes"] <= 0.2 * figures["cloud_only_bytes"]


def test_int8_edge_half_the_size_within_one_point(figures: dict[str, Any]) -> None:
    int8 = figures["int8"]
    assert isinstance(int8, dict)
    assert int8["int8_bytes"] <= 0.5 * int8["float_bytes"]
    assert abs(int8["accuracy_drop"]) <= 0.01


def test_at_least_95_percent_of_ood_inputs_escalated(figures: dict[str, Any]) -> None:
    assert figures["ood_escalated_share"] >= 0.95
    by_kind = figures["ood_escalated_by_kind"]
    assert isinstance(by_kind, dict)
    assert min(by_kind.values()) >= 0.95
