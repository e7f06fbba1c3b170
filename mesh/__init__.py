"""Edge mesh: answer at the edge, escalate what is hard, keep answering when links break."""

from mesh.client import InferResult, MeshClient
from mesh.errors import (
    DeadlineExceededError,
    ErrorCode,
    InternalError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

__all__ = [
    "DeadlineExceededError",
    "ErrorCode",
    "InferResult",
    "InternalError",
    "InvalidArgumentError",
    "MeshClient",
    "MeshError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnavailableError",
]
