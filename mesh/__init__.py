"""Edge mesh: answer at the edge, escalate what is hard, keep answering when links break.

The SDK is imported lazily (PEP 562), so ``import mesh.node.breaker`` or any other pure module does
not pull in nats-py: a module that needs no transport can be used where none is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.errors import (
    DeadlineExceededError,
    ErrorCode,
    InternalError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from mesh.sdk.client import InferResult, MeshClient

_LAZY = {"InferResult": "mesh.sdk.client", "MeshClient": "mesh.sdk.client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DeadlineExceededError",
    "ErrorCode",
    "InferResult",
    "InternalError",
    "InvalidArgumentError",
    "MeshClient",
    "MeshError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
