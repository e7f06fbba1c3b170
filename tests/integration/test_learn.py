"""The learn job against real servers with real credentials: a hub and a site, an edge node whose
answers callers asked a person to look at, the review service, a reviewer labelling them, and
the fleet's registry. A training command that fails, writes nothing, writes a model that does
not load or takes other inputs, and too few labels, each get a typed error and change nothing
(no version pushed, no rollout); the demo's trainer makes a version that is signed, gated and
pushed; ``mesh learn export`` writes the labelled set with its provenance, and ``mesh models
recalibrate`` pushes a version recalibrated on it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import InvalidArgumentError, MeshError
from mesh.fleet import registry
from mesh.fleet.admin import read_rollouts
from mesh.fleet.release import signed_artifact
from mesh.fleet.signing import SigningKey
from mesh.learn.job import LearnSettings, learn
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.settings import ModelSettings
from mesh.topology.streams import standard_topology
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.commands import mesh_cli
from tests.fixtures.site import LinkedSite
from tests.integration.test_review import ALICE, OFFER_ALL, Review, rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CONTROLLER = IdentitySpec("controller", Role.CONTROLLER)
LABELS = 40
BASE = "1-edge-weak"


@pytest.fixture
async def review(linked: LinkedSite, keystore: KeyStore) -> AsyncIterator[Review]:
    await linked.provision(standard_topology(event_models=("digits",), fleet=True))
    rig = Review(linked, keystore)
    try:
        yield rig
    finally:
        await rig.close()


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    """A training command: a small Python program given the job's arguments."""
    path = tmp_path / f"{name}.py"
    path.write_text("import sys, numpy as np\n" + body)
    return [sys.executable, str(path), "{data}", "{out}"]


async def test_bad_training_gets_typed_errors_and_changes_nothing_and_good_training_pushes(
    review: Review, chain: Chain, demo: DemoArtifacts, tmp_path: Path
) -> None:
    (edge,) = await chain.start(
        review.linked.leaf_url,
        Tier(
            "edge", model="edge-int8", threshold=0.0, novelty=False, audit_rate=0.0,
            review=OFFER_ALL,
        ),
    )  # fmt: skip
    # the float edge model runs in shadow beside the int8 one served: items carry its answers
    await edge.shadow_model(ModelSettings(name="digits", manifest=demo.edge))
    await review.start()
    x, y = rows(demo)
    app = await review.app()
    items = await review.ask(app, x, LABELS)
    alice = await review.client(ALICE)
    for i, item in enumerate(items):
        await alice.label(item, int(y[i]))
    shown = await alice.show(items[0])
    shadow = [a for a in shown["answers"] if a["version"] == "1-edge"]
    assert len(shadow) == 1 and not shadow[0]["served"] and shadow[0]["tier"] == "edge"
    stats = {(v["version"], v["tier"]): v for v in (await alice.stats(model="digits"))["versions"]}
    assert stats[("1-edge", "edge")]["labelled"] == LABELS  # labels judge the shadow too
    assert stats[("1-edge-int8", "edge")]["labelled"] == LABELS
    nc = await review.connect(CONTROLLER)
    js = nc.jetstream(domain="hub")
    controller = await review.client(CONTROLLER)
    key = SigningKey.generate()
    await registry.push(js, await asyncio.to_thread(signed_artifact, demo.edge_weak, key))
    before = [v.version for v in await registry.list_versions(js)]

    def settings(train: list[str], name: str, **more: Any) -> LearnSettings:
        given: dict[str, Any] = {"min_labels": LABELS, "rollout": False, **more}
        return LearnSettings(
            model="digits", train=train, reference=demo.calib, work_dir=tmp_path / name,
            upstream=demo.cloud, base=BASE, **given,
        )  # fmt: skip

    wrong_inputs = tmp_path / "narrow.onnx"
    await asyncio.to_thread(_narrow_model, wrong_inputs)
    bad = [
        (script(tmp_path, "fails", "print('out of memory'); sys.exit(3)"), "failed (exit 3)"),
        (script(tmp_path, "silent", "print('done')"), "wrote no model"),
        (script(tmp_path, "garbage", "open(sys.argv[2], 'wb').write(b'not onnx')"),
         "does not load"),
        (script(tmp_path, "narrow", f"import shutil; shutil.copy({str(wrong_inputs)!r}, "
                                    "sys.argv[2])"), "callers would break"),
        ([sys.executable, "-c", "pass"], "put {out} in it"),
    ]  # fmt: skip
    for i, (train, message) in enumerate(bad):
        with pytest.raises(MeshError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await learn(js, controller, settings(train, f"bad-{i}"), key, [key.public])
    with pytest.raises(InvalidArgumentError, match=f"{LABELS} labelled .* needs {LABELS + 1}"):
        await learn(
            js, controller, settings(bad[0][0], "few", min_labels=LABELS + 1), key, [key.public]
        )
    assert [v.version for v in await registry.list_versions(js)] == before
    assert await read_rollouts(js) == {}

    trainer = [
        sys.executable, "-m", "mesh.dev.models.trainer", "--base", str(demo.weak_train),
        "--data", "{data}", "--out", "{out}",
    ]  # fmt: skip
    result = await learn(js, controller, settings(trainer, "good"), key, [key.public])
    assert result.version == "2-edge-learned" and result.base == BASE
    assert result.labels == LABELS and result.trained_on + result.held_back == LABELS
    assert result.held_back > 0 and result.by_reason == {"requested": LABELS}
    assert result.accuracy >= result.min_accuracy
    pushed = await registry.fetch(js, "digits", result.version)
    assert pushed.signature.key == key.public
    assert pushed.manifest["thresholds"]["edge"] == pytest.approx(result.threshold)
    assert await read_rollouts(js) == {}  # asked for none
    export = json.loads(Path(result.export).with_suffix(".json").read_text())
    assert export["rows"] == LABELS and export["held_back"] == result.held_back
    first = export["provenance"][0]
    assert first["labelled_by"] == "alice" and first["reason"] == "requested"
    assert first["answers"] and first["request_id"].startswith("ask-")
    await nc.close()

    # the same through the command line: the export, then a recalibration pushed on it
    creds = str(await asyncio.to_thread(review.keystore.ensure, CONTROLLER))
    hub = ["--servers", review.linked.hub_url, "--creds", creds]
    out = tmp_path / "cli" / "labels.npz"
    code, printed, err = await mesh_cli("learn", "export", "digits", "--out", str(out), *hub)
    assert code == 0, err
    assert f"exported {LABELS} labelled items" in printed
    saved = np.load(out)
    assert saved["x"].shape == (LABELS, 64) and sorted(saved["y"].tolist()) == sorted(
        int(v) for v in y[:LABELS]
    )
    assert json.loads(out.with_suffix(".json").read_text())["provenance"][0]["item"] in items
    key_path = tmp_path / "release.key"
    await asyncio.to_thread(key.save, key_path)
    code, printed, err = await mesh_cli(
        "models", "recalibrate", "digits", BASE, "--labels", str(out), "--reference",
        str(demo.calib), "--upstream", str(demo.cloud), "--key", str(key_path), *hub,
    )  # fmt: skip
    assert code == 0, err
    reference_rows = len(np.load(demo.calib)["y"])
    assert "pushed digits@3-edge-weak" in printed
    assert f"on {LABELS + reference_rows} labelled rows" in printed


def _narrow_model(path: Path) -> None:
    """A digits classifier that takes 32 features, not 64."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).random((100, 32), dtype=np.float32), np.arange(100) % 10
    model = LogisticRegression(max_iter=200).fit(x, y)
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 32]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(model): {"zipmap": False}},
    )
    path.write_bytes(proto.SerializeToString())
