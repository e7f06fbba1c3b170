"""The one place that opens ONNX Runtime sessions for the model tools (build, check, calibrate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from mesh.models.manifest import ModelManifest, load_manifest, verify_artifact

Floats32 = npt.NDArray[np.float32]


def open_session(path: Path | str, threads: int = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on CPU with ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class LoadedModel:
    """A verified artifact with its manifest, ready to score batches."""

    def __init__(self, manifest: ModelManifest, manifest_path: Path, threads: int = 1) -> None:
        self.manifest = manifest
        self.manifest_path = manifest_path
        self.artifact = verify_artifact(manifest, manifest_path)
        self.session = open_session(self.artifact, threads)
        self.input_name: str = manifest.inputs[0].name

    @classmethod
    def load(cls, manifest_path: Path | str, threads: int = 1) -> LoadedModel:
        """Read the manifest, check the artifact's hash and open a session on it."""
        path = Path(manifest_path)
        return cls(load_manifest(path), path, threads)

    def probabilities(self, x: npt.ArrayLike, batch: int = 1024) -> Floats32:
        """Class probabilities (N, C) of inputs (N, F)."""
        rows = np.ascontiguousarray(x, dtype=np.float32)
        names = [self.manifest.scored_output]
        parts = [
            self.session.run(names, {self.input_name: rows[i : i + batch]})[0]
            for i in range(0, len(rows), batch)
        ]
        out: Floats32 = np.concatenate(parts).astype(np.float32, copy=False)
        return out
