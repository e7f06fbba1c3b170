"""The wire contracts: msgpack maps with ``v`` and ``kind``, pure functions over bytes.

``codec`` is the envelope, ``tensors`` the tensor encoding, ``messages`` the request/reply
messages, ``records`` what nodes write about themselves (hard examples, status, drift),
``power`` their energy (status and governor steps), ``shadow`` the versions they run in
shadow. Every name is importable from ``mesh.wire``; the JSON Schemas are in ``schemas/``.
"""

from mesh.wire.codec import VERSION, peek_id, unpack_raw
from mesh.wire.messages import (
    MAX_ID_LENGTH,
    ErrorReply,
    Hop,
    InferRequest,
    InferResponse,
    Message,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_response,
)
from mesh.wire.power import PowerStatus, PowerStepEvent, decode_power_step, encode_power_step
from mesh.wire.records import (
    EVIDENCE_COUNTERS,
    MAX_ANSWERED_CALLERS,
    AnsweredFor,
    DriftEvent,
    HardExample,
    NodeEvent,
    NodeStatus,
    RecordedAnswer,
    VersionEvidence,
    decode_drift_event,
    decode_hard_example,
    decode_node_event,
    decode_node_status,
    encode_drift_event,
    encode_hard_example,
    encode_node_event,
    encode_node_status,
)
from mesh.wire.shadow import SHADOW_COUNTERS, ShadowEvidence
from mesh.wire.tensors import DTYPES, MAX_RANK, decode_tensor, dtype_name, encode_tensor

__all__ = [
    "DTYPES",
    "EVIDENCE_COUNTERS",
    "MAX_ANSWERED_CALLERS",
    "MAX_ID_LENGTH",
    "MAX_RANK",
    "SHADOW_COUNTERS",
    "VERSION",
    "AnsweredFor",
    "DriftEvent",
    "ErrorReply",
    "HardExample",
    "Hop",
    "InferRequest",
    "InferResponse",
    "Message",
    "NodeEvent",
    "NodeStatus",
    "PowerStatus",
    "PowerStepEvent",
    "RecordedAnswer",
    "ShadowEvidence",
    "VersionEvidence",
    "decode_drift_event",
    "decode_hard_example",
    "decode_node_event",
    "decode_node_status",
    "decode_power_step",
    "decode_reply",
    "decode_request",
    "decode_tensor",
    "dtype_name",
    "encode_drift_event",
    "encode_error",
    "encode_hard_example",
    "encode_node_event",
    "encode_node_status",
    "encode_power_step",
    "encode_request",
    "encode_response",
    "encode_tensor",
    "peek_id",
    "unpack_raw",
]
