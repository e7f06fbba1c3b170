"""One error tree for the mesh: every error carries a wire code a caller can act on.

Codes follow the gRPC/HTTP family, as Triton and KServe callers know them. Each transport maps
them once: NATS replies carry the code in the error message and in the micro-services headers,
HTTP maps them to a status (``HTTP_STATUS``).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNAUTHENTICATED: 401,
}


class MeshError(Exception):
    """Base of every error the mesh raises or replies with."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class InvalidArgumentError(MeshError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFoundError(MeshError):
    code = ErrorCode.NOT_FOUND


class DeadlineExceededError(MeshError):
    code = ErrorCode.DEADLINE_EXCEEDED


class UnavailableError(MeshError):
    code = ErrorCode.UNAVAILABLE


class ResourceExhaustedError(MeshError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class InternalError(MeshError):
    code = ErrorCode.INTERNAL


class PermissionDeniedError(MeshError):
    """The identity is known but its rights do not cover what it tried (NATS's "Permissions
    Violation"); the message names the identity, the subject and what the identity may do."""

    code = ErrorCode.PERMISSION_DENIED


class UnauthenticatedError(MeshError):
    """The server does not accept the identity at all (NATS's "Authorization Violation"):
    credentials of another fleet, revoked or expired, or none."""

    code = ErrorCode.UNAUTHENTICATED


_BY_CODE: dict[ErrorCode, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        DeadlineExceededError,
        UnavailableError,
        ResourceExhaustedError,
        InternalError,
        PermissionDeniedError,
        UnauthenticatedError,
    )
}


def error_for(code: str, message: str) -> MeshError:
    """The typed exception for a wire code; an unknown code becomes ``InternalError``."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        return InternalError(f"unknown error code {code!r}: {message}")
    return cls(message)
