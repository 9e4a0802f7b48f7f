"""One exception handler: every error is JSON {"error": {"code", "message", "field"}}."""
from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from .errors import CoverError

log = logging.getLogger(__name__)


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def _first_field_error(detail, prefix: str = "") -> tuple[str | None, str, str]:
    """(field, message, code) of the first error in a DRF ValidationError detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            field = key if key != "non_field_errors" else None
            name = f"{prefix}{field}" if field else (prefix.rstrip(".") or None)
            f, msg, code = _first_field_error(value, f"{name}." if name else "")
            return (f or name), msg, code
    if isinstance(detail, list) and detail:
        return _first_field_error(detail[0], prefix)
    code = getattr(detail, "code", "invalid") or "invalid"
    return None, str(detail), code


def exception_handler(exc, context):
    if isinstance(exc, CoverError):
        headers = {}
        return Response(error_body(exc.code, exc.message, exc.field), status=exc.status_code, headers=headers)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, PermissionDenied):
        return Response(error_body("permission_denied", "You may not do this."), status=403)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("upload_too_large", str(exc)), status=413)
    if isinstance(exc, drf.ValidationError):
        field, message, code = _first_field_error(exc.detail)
        if field and not message.lower().startswith(field.lower()):
            message = f"{field}: {message}"
        return Response(error_body("invalid_parameter" if code == "invalid" else code, message, field),
                        status=400)
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        code = "not_authenticated" if isinstance(exc, drf.NotAuthenticated) else "authentication_failed"
        message = str(exc.detail)
        if isinstance(exc, drf.NotAuthenticated):
            message = "An API key is required in the X-API-Key header."
        return Response(error_body(code, message, "X-API-Key"), status=401,
                        headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'})
    if isinstance(exc, drf.APIException):
        detail = exc.detail
        message = str(detail if not isinstance(detail, (list, dict)) else exc.default_detail)
        return Response(error_body(exc.default_code if isinstance(exc.default_code, str) else "error", message),
                        status=exc.status_code, headers=getattr(exc, "headers", None) or {})
    log.exception("unhandled API error")
    return Response(error_body("internal_error", "Internal server error."), status=500)


def json_error(status: int, code: str, message: str, field: str | None = None) -> JsonResponse:
    """For plain Django views/middleware outside DRF (404/500 handlers, size limits)."""
    return JsonResponse(error_body(code, message, field), status=status)
