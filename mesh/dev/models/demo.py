"""The demo models: three digit classifiers, one per tier, built from scikit-learn's bundled data.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images of
8x8 pixels, 16 grey levels). The split is seeded and stratified: train 60%, calibration 15%,
test 25%. All three models serve the model name ``digits``:

- edge: an MLP 128x32, exported to ONNX and quantized to int8 statically, activation scales
  from the calibration split's rows (the edge tier serves the int8 file). A logistic regression
  is nearly as accurate but its graph is too small for int8 to halve; an MLP 64x32 halves too,
  but over seeds 0-4 it kept under 85% of the test split at the edge once, where 128x32 kept
  89-96% within 0.5 point of the cloud.
- gateway: an MLP with 64 hidden units.
- cloud: an RBF support vector machine with sigmoid-calibrated probabilities (one calibrator
  fitted on 5-fold out-of-fold scores), the most accurate of the three.
- a deliberately weak edge version (``1-edge-weak``, float): the edge's MLP trained on part of
  the data, the first 30% of the training split with nine in ten of its 5s and 9s left out, its
  reference statistics from those rows (``digits-edge-weak-train.npz``, which the demo's trainer
  learns from again, with what people labelled: ``mesh.dev.models.trainer``).

The same seed gives byte-identical ONNX files: every estimator has a fixed ``random_state``,
the opsets are pinned and written in one order, the child process below has a fixed hash seed,
and the exporters write no timestamp. The training runs in a child
process with OpenBLAS on one thread and, on x86-64, its Haswell (AVX2) kernels: OpenBLAS picks
its kernels by the CPU (AVX-512 on some machines) and splits work by thread count, and either
changes the trained weights, so the same seed gave different models (an edge model 0.2 point
less accurate) on different machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.errors import MeshError
from mesh.models.manifest import (
    MANIFEST_SUFFIX,
    HardwareProfile,
    ModelManifest,
    QualityTarget,
    ReferenceStats,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_of,
)
from mesh.models.reference import reference_stats
from mesh.models.session import LoadedModel
from mesh.scoring.novelty import NoveltyScorer

MODEL_NAME = "digits"
N_FEATURES = 64
N_CLASSES = 10
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
DEFAULT_THRESHOLD = 0.9
PREPROCESSING = "8x8 grayscale digit, row-major, pixels scaled to [0,1] (raw 0..16 divided by 16)"
RECIPE_VERSION = "digits-demo-5"
#: the weak edge version's part of the training split: its first share, with nine in ten of
#: the rows of these classes left out.
WEAK_SHARE = 0.3
WEAK_SCARCE = (5, 9)
MARKER = ".demo-build.json"

Floats32 = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DemoArtifacts:
    """Paths of a built demo: one manifest per variant (next to its .onnx) and the data splits."""

    root: Path
    edge: Path
    edge_int8: Path
    gateway: Path
    cloud: Path
    test: Path
    calib: Path
    edge_weak: Path
    weak_train: Path

    @classmethod
    def at(cls, root: Path) -> DemoArtifacts:
        """The paths a build into ``root`` produces (whether or not they exist yet)."""
        m = MODEL_NAME
        return cls(
            root=root,
            edge=root / f"{m}-edge{MANIFEST_SUFFIX}",
            edge_int8=root / f"{m}-edge-int8{MANIFEST_SUFFIX}",
            gateway=root / f"{m}-gateway{MANIFEST_SUFFIX}",
            cloud=root / f"{m}-cloud{MANIFEST_SUFFIX}",
            test=root / f"{m}-test.npz",
            calib=root / f"{m}-calib.npz",
            edge_weak=root / f"{m}-edge-weak{MANIFEST_SUFFIX}",
            weak_train=root / f"{m}-edge-weak-train.npz",
        )

    @property
    def manifests(self) -> dict[str, Path]:
        """Manifest path per variant name."""
        return {
            "edge": self.edge,
            "edge-int8": self.edge_int8,
            "edge-weak": self.edge_weak,
            "gateway": self.gateway,
            "cloud": self.cloud,
        }

    def files(self) -> list[Path]:
        """Every file of the build: manifests, their artifacts and the splits."""
        out = [self.test, self.calib, self.weak_train]
        for path in self.manifests.values():
            out.append(path)
            out.append(path.parent / load_manifest(path).artifact)
        return out


@dataclass(frozen=True)
class Splits:
    """The seeded, stratified split of the digits data."""

    x_train: Floats32
    y_train: Ints
    x_calib: Floats32
    y_calib: Ints
    x_test: Floats32
    y_test: Ints


def load_digits_split(seed: int = 0) -> Splits:
    """Digits as float32 (N, 64) in [0, 1], split 60/15/25, stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=0.6, stratify=y, random_state=seed
    )
    x_calib, x_test, y_calib, y_test = train_test_split(
        x_rest, y_rest, test_size=0.625, stratify=y_rest, random_state=seed
    )
    return Splits(x_train, y_train, x_calib, y_calib, x_test, y_test)


def _estimators(seed: int) -> dict[str, Any]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    return {
        "edge": MLPClassifier((128, 32), alpha=1e-3, max_iter=500, random_state=seed),
        "gateway": MLPClassifier((64,), alpha=1e-3, max_iter=500, random_state=seed),
        "cloud": CalibratedClassifierCV(
            SVC(C=10.0, gamma="scale", random_state=seed), method="sigmoid", cv=5, ensemble=False
        ),
    }


_PROFILES: dict[str, HardwareProfile] = {
    "edge": HardwareProfile(latency_p99_ms=2.0, memory_mb=64.0),
    "gateway": HardwareProfile(latency_p99_ms=5.0, memory_mb=128.0),
    "cloud": HardwareProfile(latency_p99_ms=20.0, memory_mb=256.0),
}
_MIN_ACCURACY: dict[str, float] = {"edge": 0.95, "gateway": 0.96, "cloud": 0.97}


def _train(estimator: Any, x: Floats32, y: Ints) -> Any:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x, y)
    return estimator


def export_onnx(estimator: Any, path: Path) -> None:
    """Write a fitted classifier as ONNX: input ``input`` float32 [None, 64], outputs ``label``
    int64 [N] and ``probabilities`` float32 [N, 10], pinned opsets, the file's stem as graph
    name (skl2onnx would put a random uuid there) and no doc string."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # skl2onnx 1.20 reads SVC.probA_/probB_, deprecated in scikit-learn 1.9; harmless here.
        warnings.filterwarnings("ignore", message=r"Attribute `prob[AB]_`", category=FutureWarning)
        proto = convert_sklearn(
            estimator,
            initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
            target_opset=TARGET_OPSET,
            options={id(estimator): {"zipmap": False}},
        )
    proto.doc_string = ""
    proto.graph.name = path.stem
    # skl2onnx collects the opsets in a set, so their order may change from one process to the
    # next: two builds in one CI session differed in nothing else.
    opsets = sorted(proto.opset_import, key=lambda o: (o.domain, o.version))
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
    path.write_bytes(proto.SerializeToString())


def _manifest(
    tier: str,
    version: str,
    artifact: Path,
    reference: ReferenceStats | None,
    quality: QualityTarget,
    profile: HardwareProfile,
) -> ModelManifest:
    return ModelManifest(
        name=MODEL_NAME,
        version=version,
        tier_hint=tier,
        inputs=[TensorSpec(name="input", dtype="float32", shape=[None, N_FEATURES])],
        outputs=[
            TensorSpec(name="label", dtype="int64", shape=[None]),
            TensorSpec(name="probabilities", dtype="float32", shape=[None, N_CLASSES]),
        ],
        labels=[str(i) for i in range(N_CLASSES)],
        preprocessing=PREPROCESSING,
        artifact=artifact.name,
        sha256=sha256_of(artifact),
        scored_output="probabilities",
        confidence="max_prob",
        thresholds={tier: 0.0 if tier == "cloud" else DEFAULT_THRESHOLD},
        reference=reference,
        profile=profile,
        quality=quality,
    )


def _write_manifest(manifest: ModelManifest, root: Path, variant: str) -> Path:
    path = root / f"{MODEL_NAME}-{variant}{MANIFEST_SUFFIX}"
    save_manifest(manifest, path)
    return path


def _accuracy(model: LoadedModel, x: Floats32, y: Ints) -> float:
    return float((model.probabilities(x).argmax(axis=1) == y).mean())


def build_demo(out: Path, seed: int = 0, calibrate_thresholds: bool = True) -> DemoArtifacts:
    """Train, export, quantize and (by default) calibrate the demo models into ``out``."""
    from mesh.models.quantize import quantize_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = DemoArtifacts.at(out)
    splits = load_digits_split(seed)
    novelty = NoveltyScorer.fit(splits.x_train)
    np.savez(paths.test, x=splits.x_test, y=splits.y_test)
    np.savez(paths.calib, x=splits.x_calib, y=splits.y_calib)

    float_accuracy: dict[str, float] = {}
    for tier, estimator in _estimators(seed).items():
        _train(estimator, splits.x_train, splits.y_train)
        onnx_path = out / f"{MODEL_NAME}-{tier}.onnx"
        export_onnx(estimator, onnx_path)
        draft = _manifest(
            tier,
            f"1-{tier}",
            onnx_path,
            None,
            QualityTarget(min_accuracy=_MIN_ACCURACY[tier]),
            _PROFILES[tier],
        )
        model = LoadedModel(draft, out / "draft.json")
        confidence = model.probabilities(splits.x_train).max(axis=1)
        float_accuracy[tier] = _accuracy(model, splits.x_test, splits.y_test)
        draft.reference = reference_stats(splits.x_train, confidence, novelty)
        _write_manifest(draft, out, tier)

    edge = load_manifest(paths.edge)
    int8_onnx = out / f"{MODEL_NAME}-edge-int8.onnx"
    quantize_model(out / edge.artifact, int8_onnx, calibration=splits.x_calib)
    int8 = edge.model_copy(deep=True)
    int8.version = "1-edge-int8"
    int8.artifact = int8_onnx.name
    int8.sha256 = sha256_of(int8_onnx)
    int8.quality = QualityTarget(
        min_accuracy=_MIN_ACCURACY["edge"],
        max_accuracy_drop=0.01,
        drop_reference=edge.version,
        reference_accuracy=float_accuracy["edge"],
    )
    _write_manifest(int8, out, "edge-int8")
    int8_model = LoadedModel(int8, paths.edge_int8)
    confidence = int8_model.probabilities(splits.x_train).max(axis=1)
    int8.reference = reference_stats(splits.x_train, confidence, novelty)
    _write_manifest(int8, out, "edge-int8")

    _build_weak(out, paths, splits, seed)

    if calibrate_thresholds:
        from mesh.models.calibrate import calibrate

        # the weak version first: each calibration writes the gateway's threshold too, and the
        # gateway keeps the one chosen above the int8 edge, as before
        for edge_manifest in (paths.edge_weak, paths.edge, paths.edge_int8):
            calibrate(
                edge_manifest,
                [paths.gateway, paths.cloud],
                splits.x_calib,
                splits.y_calib,
            )
    return paths


def weak_rows(splits: Splits) -> tuple[Floats32, Ints]:
    """The weak edge version's training rows: the first ``WEAK_SHARE`` of the training split,
    with nine in ten of the ``WEAK_SCARCE`` classes' rows left out."""
    n = int(len(splits.x_train) * WEAK_SHARE)
    x, y = splits.x_train[:n], splits.y_train[:n]
    keep = ~np.isin(y, WEAK_SCARCE) | (np.arange(n) % 10 == 0)
    return x[keep], y[keep]


def _build_weak(out: Path, paths: DemoArtifacts, splits: Splits, seed: int) -> None:
    """The deliberately weak edge version: the edge's recipe on part of the data, reference
    statistics (and novelty) from those rows, its accuracy bar two points under what it
    reaches on the test split."""
    x, y = weak_rows(splits)
    np.savez(paths.weak_train, x=x, y=y)
    estimator = _train(_estimators(seed)["edge"], x, y)
    onnx_path = out / f"{MODEL_NAME}-edge-weak.onnx"
    export_onnx(estimator, onnx_path)
    draft = _manifest(
        "edge", "1-edge-weak", onnx_path, None, QualityTarget(min_accuracy=0.0), _PROFILES["edge"]
    )
    model = LoadedModel(draft, out / "draft.json")
    accuracy = _accuracy(model, splits.x_test, splits.y_test)
    draft.quality = QualityTarget(min_accuracy=round(accuracy - 0.02, 2))
    confidence = model.probabilities(x).max(axis=1)
    draft.reference = reference_stats(x, confidence, NoveltyScorer.fit(x))
    _write_manifest(draft, out, "edge-weak")


def _recipe_hash(seed: int) -> str:
    import skl2onnx
    import sklearn

    import mesh.scoring.novelty
    from mesh.models import calibrate, manifest, quantize

    modules = [__file__, mesh.scoring.novelty.__file__, calibrate.__file__, manifest.__file__]
    modules.append(quantize.__file__)
    sources = hashlib.sha256()
    for module in modules:
        sources.update(Path(str(module)).read_bytes())
    key = json.dumps(
        {
            "recipe": RECIPE_VERSION,
            "seed": seed,
            "sklearn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "sources": sources.hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()


def _marker_recipe(paths: DemoArtifacts) -> str | None:
    try:
        recipe = json.loads((paths.root / MARKER).read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None
    return recipe if isinstance(recipe, str) else None


def _marker_ok(paths: DemoArtifacts, recipe: str) -> bool:
    marker = paths.root / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        if data.get("recipe") != recipe:
            return False
        files: dict[str, str] = data["files"]
        return all(sha256_of(paths.root / name) == digest for name, digest in files.items()) and (
            {p.name for p in paths.files()} <= set(files)
        )
    except (OSError, ValueError, KeyError, TypeError, MeshError):
        return False


#: the environment of the child process that trains: one BLAS kernel and thread count on every
#: machine of an architecture (see the module's docstring).
PINNED_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: and one hash seed: an exporter or quantizer that iterates a set of strings writes its parts
#: in the order the seed gives (skl2onnx's opsets come out of one).
PINNED_HASH_SEED = {"PYTHONHASHSEED": "0"}


def _build_pinned(out: Path, seed: int) -> DemoArtifacts:
    """``build_demo`` in a child process whose OpenBLAS is pinned before it loads."""
    env = {**os.environ, **PINNED_BLAS, **PINNED_HASH_SEED}
    if platform.machine().lower() in ("x86_64", "amd64"):
        env["OPENBLAS_CORETYPE"] = "Haswell"
    done = subprocess.run(
        [sys.executable, "-m", "mesh.dev.models.demo", str(out), str(seed)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise MeshError(f"building the demo models failed: {done.stderr.strip()[-2000:]}")
    return DemoArtifacts.at(out)


def ensure_demo(
    cache_dir: Path, seed: int = 0, notice: Callable[[str], None] | None = None
) -> DemoArtifacts:
    """The demo build in ``cache_dir``, built only when missing, changed or from another recipe.

    ``notice`` is told when a build of another recipe (another checkout or version of the mesh)
    is replaced: a mesh running from there would now find other bytes under the same version
    names.

    A marker file records the recipe hash and the SHA-256 of every file; the build happens in a
    temporary sibling directory and the files are moved in before the marker is written, so a
    reader never sees a half-written build marked as complete.
    """
    cache_dir = Path(cache_dir)
    paths = DemoArtifacts.at(cache_dir)
    recipe = _recipe_hash(seed)
    if _marker_ok(paths, recipe):
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Several processes may ask for one cache at once (mesh up beside a test, parallel test
    # workers): one builds while the others wait, then find its build complete.
    with _build_lock(cache_dir):
        if _marker_ok(paths, recipe):
            return paths
        _build_into(cache_dir, paths, recipe, seed, notice)
    return paths


@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    with open(cache_dir / ".build.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(
    cache_dir: Path,
    paths: DemoArtifacts,
    recipe: str,
    seed: int,
    notice: Callable[[str], None] | None,
) -> None:
    other = _marker_recipe(paths)
    if notice is not None and other is not None and other != recipe:
        notice(
            f"note: the demo models in {cache_dir} were built by another checkout or version of "
            "the mesh; rebuilding them for this one (give each its own --cache to keep both)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=cache_dir))
    try:
        built = _build_pinned(staging, seed)
        names = [p.name for p in built.files()]
        (cache_dir / MARKER).unlink(missing_ok=True)
        for name in names:
            os.replace(staging / name, cache_dir / name)
        marker = {
            "recipe": recipe,
            "files": {name: sha256_of(cache_dir / name) for name in names},
        }
        (cache_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if (
    __name__ == "__main__"
):  # the pinned build's child process: python -m mesh.dev.models.demo OUT SEED
    build_demo(Path(sys.argv[1]), int(sys.argv[2]))
