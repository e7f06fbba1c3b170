"""A deliberately bad release: the same model with two classes swapped in its outputs.

What a rollout's gates exist to stop: it loads, passes the device gate (same graph, same speed),
is as confident as the good model, and is wrong on every input of the two classes. Only the
agreement with the tier above gives it away. Used by the demo, the tests and the fleet
simulation; never by a node on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mesh.models.manifest import (
    MANIFEST_SUFFIX,
    load_manifest,
    save_manifest,
    sha256_of,
    verify_artifact,
)


def confuse_classes(
    manifest_path: Path | str, version: str, out_dir: Path | str, a: int = 3, b: int = 8
) -> Path:
    """Write ``version`` of the model at ``manifest_path`` answering class ``b`` for ``a`` and
    ``a`` for ``b`` (labels and probabilities) into ``out_dir``; returns its manifest. Blocking."""
    import onnx
    from onnx import helper, numpy_helper

    source = load_manifest(manifest_path)
    model = onnx.load(str(verify_artifact(source, manifest_path)))
    classes = len(source.labels)
    permutation = np.arange(classes, dtype=np.int64)
    permutation[[a, b]] = permutation[[b, a]]
    graph = model.graph
    for output in graph.output:
        raw = f"{output.name}__before_confusion"
        for node in graph.node:
            node.output[:] = [raw if o == output.name else o for o in node.output]
            node.input[:] = [raw if i == output.name else i for i in node.input]
        table = f"{output.name}__confusion"
        graph.initializer.append(numpy_helper.from_array(permutation, table))
        if output.name == source.scored_output:
            # probabilities[:, permutation]: column a takes b's probability and b takes a's
            node = helper.make_node("Gather", [raw, table], [output.name], axis=1)
        else:
            # label -> permutation[label]
            node = helper.make_node("Gather", [table, raw], [output.name], axis=0)
        graph.node.append(node)
    onnx.checker.check_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / f"{source.name}-{version}.onnx"
    artifact.write_bytes(model.SerializeToString())
    manifest = source.model_copy(
        update={"version": version, "artifact": artifact.name, "sha256": sha256_of(artifact)}
    )
    path = out / f"{source.name}-{version}{MANIFEST_SUFFIX}"
    save_manifest(manifest, path)
    return path
