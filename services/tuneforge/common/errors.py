"""The domain error hierarchy. Domain code raises these; one gRPC interceptor maps them to status codes.

Domain modules never import grpc: each error names its status as a plain string, and the servicer
layer (`tuneforge.common.interceptors`) owns the mapping table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid input field: which field (and line, for uploaded files) and what would be right."""

    field: str
    description: str
    line: int = 0
    code: str = ""

    def location(self) -> str:
        """`field` or `field:line N`, the form clients see in `google.rpc.BadRequest`."""
        return f"{self.field}:line {self.line}" if self.line else self.field


class TuneforgeError(Exception):
    """Base of every error a caller can act on. `status` names the gRPC status code it maps to."""

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TuneforgeError):
    """The request is malformed; `violations` says which fields and why (all of them at once)."""

    status = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def for_field(cls, field: str, description: str, line: int = 0) -> InvalidArgument:
        """An error about a single field, with the field named in the message too."""
        return cls(f"{field}: {description}", [FieldViolation(field, description, line)])


class Unauthenticated(TuneforgeError):
    """No credential, or one that is not known."""

    status = "UNAUTHENTICATED"


class PermissionDenied(TuneforgeError):
    """The caller is known but its role does not allow the call (never used to hide other tenants)."""

    status = "PERMISSION_DENIED"


class NotFound(TuneforgeError):
    """The resource does not exist for this tenant (also what other tenants' resources look like)."""

    status = "NOT_FOUND"

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id!r} not found")
        self.kind = kind
        self.resource_id = resource_id


class AlreadyExists(TuneforgeError):
    """A resource with this name already exists."""

    status = "ALREADY_EXISTS"


class FailedPrecondition(TuneforgeError):
    """The request is valid but the system is not in a state to perform it (e.g. idempotency key reused)."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(TuneforgeError):
    """A quota or size limit would be exceeded."""

    status = "RESOURCE_EXHAUSTED"
    #: False where retrying cannot help (the request is larger than the whole resource): HTTP answers 400
    #: naming `field` instead of 429 with Retry-After.
    retryable = True
    field = ""

    @classmethod
    def never_fits(cls, field: str, message: str) -> ResourceExhausted:
        """RESOURCE_EXHAUSTED for a request no amount of waiting makes fit; `field` names what to lower."""
        exc = cls(message)
        exc.retryable, exc.field = False, field
        return exc


class Unavailable(TuneforgeError):
    """A dependency (database, Ray, model) is not reachable right now; retrying later may work."""

    status = "UNAVAILABLE"


class DataLoss(TuneforgeError):
    """Stored or uploaded bytes do not match their expected hash."""

    status = "DATA_LOSS"


class Unimplemented(TuneforgeError):
    """The call is part of the contract but this server does not offer it."""

    status = "UNIMPLEMENTED"
