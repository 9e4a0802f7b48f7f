"""Domain errors raised by services/selectors; covers.exceptions maps them to HTTP."""
from __future__ import annotations


class CoverError(Exception):
    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code


class InvalidParameter(CoverError):
    status_code = 400
    code = "invalid_parameter"


class NotFound(CoverError):
    status_code = 404
    code = "not_found"


class Conflict(CoverError):
    status_code = 409
    code = "conflict"


class UploadTooLarge(CoverError):
    status_code = 413
    code = "upload_too_large"


class UnsupportedMedia(CoverError):
    status_code = 415
    code = "unsupported_media"


class UnprocessableAudio(CoverError):
    status_code = 422
    code = "invalid_audio"


class LimitExceeded(CoverError):
    status_code = 429
    code = "limit_exceeded"


class QueueUnavailable(CoverError):
    status_code = 503
    code = "queue_unavailable"


class IllegalTransition(Exception):
    """A status change the state machine forbids (internal; callers usually treat it as a no-op)."""


class Gone(CoverError):
    """The job's files were deleted by the cleanup (the row stays, marked expired)."""

    status_code = 410
    code = "expired"


class IdempotencyMismatch(CoverError):
    """An Idempotency-Key reused with different parameters."""

    status_code = 422
    code = "idempotency_mismatch"
