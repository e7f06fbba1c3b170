"""What every row sends: one digits row, float32 (1, 64), cycling through the held-out split in
the same order for every row, in the encoding each row's protocol takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mesh import wire
from mesh.dev.bench.config import MESH_BUDGET_MS
from mesh.ingress.proto import grpc_predict_v2_pb2 as oip_pb
from mesh.sdk.client import DEFAULT_INPUT
from mesh.typedefs import Array


@dataclass(frozen=True)
class Payloads:
    #: the rows as arrays, for the SDK and the in-process floor.
    rows: list[Array]
    #: the msgpack ``InferRequest`` the SDK would send (same bytes on the wire), for the echo.
    envelopes: list[bytes]
    #: raw float32 bytes, for the bare ONNX Runtime responder.
    raw: list[bytes]
    #: nested lists, for the JSON bodies of the HTTP peers and the OIP REST ingress.
    json_rows: list[list[list[float]]]
    #: V2 gRPC requests with raw contents, for the OIP gRPC ingress.
    grpc: list[oip_pb.ModelInferRequest]

    def __len__(self) -> int:
        return len(self.rows)

    def v2_body(self, i: int) -> dict[str, object]:
        """The V2 JSON inference request of row ``i`` (MLServer's and the ingress's REST)."""
        return {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "data": self.json_rows[i % len(self.rows)][0],
                }
            ]
        }

    @classmethod
    def of_split(cls, test_split: Path) -> Payloads:
        test_x = np.load(test_split)["x"].astype(np.float32)
        rows: list[Array] = [np.ascontiguousarray(test_x[i : i + 1]) for i in range(len(test_x))]
        return cls(
            rows=rows,
            envelopes=[_envelope(i, x) for i, x in enumerate(rows)],
            raw=[x.tobytes() for x in rows],
            json_rows=[x.tolist() for x in rows],
            grpc=[_grpc_request(x) for x in rows],
        )


def _envelope(i: int, x: Array) -> bytes:
    return wire.encode_request(
        wire.InferRequest(
            id=f"{i:032x}",
            model="digits",
            inputs={DEFAULT_INPUT: x},
            budget_ms=MESH_BUDGET_MS,
            residency="any",
        )
    )


def _grpc_request(x: Array) -> oip_pb.ModelInferRequest:
    request = oip_pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x.tobytes())
    return request
