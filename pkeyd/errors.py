"""One exception tree; each error carries a stable code and its HTTP status."""

from __future__ import annotations


class PkeydError(Exception):
    """Base of every error pkeyd raises on purpose."""

    code = "internal"
    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class BadRequestError(PkeydError):
    code = "bad_request"
    status = 400


class UnauthorizedError(PkeydError):
    """No credentials, or a token that is unknown or revoked."""

    code = "unauthorized"
    status = 401


class ForbiddenError(PkeydError):
    """A valid token whose role is below what the call needs."""

    code = "forbidden"
    status = 403


class ValidationError(PkeydError):
    code = "invalid"
    status = 422


class NotFoundError(PkeydError):
    code = "not_found"
    status = 404


class ConflictError(PkeydError):
    code = "conflict"
    status = 409


class PreconditionFailedError(PkeydError):
    """An If-Match names a version the partition no longer has."""

    code = "precondition_failed"
    status = 412


class PayloadTooLargeError(PkeydError):
    code = "too_large"
    status = 413


class UnsupportedMediaTypeError(PkeydError):
    code = "unsupported_media_type"
    status = 415


class UnavailableError(PkeydError):
    """What was asked for is switched off by configuration."""

    code = "unavailable"
    status = 503


class SchemaOutdatedError(PkeydError):
    """The database exists at an older schema revision; the operator migrates it."""

    code = "schema_outdated"
    status = 503


class ReloadError(PkeydError):
    """OpenSM could not be told to reload; transient, retried by the reconciler."""

    code = "reload_failed"
    status = 503
