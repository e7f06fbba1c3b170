"""The demo's trainer, as a learn job runs it (``mesh learn run --train``):

    python -m mesh.dev.models.trainer --base digits-edge-weak-train.npz --data {data} --out {out}

It trains the edge's recipe (``demo._estimators``: an MLP 128x32) on the rows the weak version
was trained on plus the labelled rows of the export (``x``, ``y``), and writes the ONNX model.
Any trainer that reads an ``.npz`` and writes an ONNX classifier of the same inputs and classes
would do; this one is the demo's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mesh.dev.models.demo import N_CLASSES, N_FEATURES, _estimators, _train, export_onnx


def train(base: Path, data: Path, out: Path, seed: int = 0) -> tuple[int, int]:
    """Train on ``base`` plus ``data`` and write ``out``; the rows of each used."""
    old, new = np.load(base), np.load(data)
    x_new = np.asarray(new["x"], dtype=np.float32).reshape(len(new["y"]), -1)
    if x_new.shape[1] != N_FEATURES:
        raise SystemExit(f"the export's inputs have {x_new.shape[1]} features, not {N_FEATURES}")
    x = np.concatenate([np.asarray(old["x"], dtype=np.float32), x_new])
    y = np.concatenate([np.asarray(old["y"], dtype=np.int64), np.asarray(new["y"], np.int64)])
    if set(np.unique(y).tolist()) != set(range(N_CLASSES)):
        raise SystemExit(f"the rows hold classes {sorted(set(y.tolist()))}, not all ten")
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    # one BLAS thread: a trainer beside serving processes must not spin on every core (the
    # demo's took 16 s instead of 1 with the default threads on a busy machine)
    with threadpool_limits(limits=1):
        estimator = _train(_estimators(seed)["edge"], x, y)
    export_onnx(estimator, out)
    return len(old["y"]), len(x_new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.dev.models.trainer")
    parser.add_argument("--base", type=Path, required=True, help="rows trained on before")
    parser.add_argument("--data", type=Path, required=True, help="the learn job's export")
    parser.add_argument("--out", type=Path, required=True, help="the ONNX model to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    before, labelled = train(args.base, args.data, args.out, args.seed)
    print(f"trained the edge MLP on {before} earlier rows and {labelled} labelled rows: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
