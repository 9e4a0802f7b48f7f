"""Every error on an API path is JSON {"error": {"code", "message", "field"}}: DRF's exceptions go
through :func:`exception_handler`; :class:`ApiJsonErrorsMiddleware` (first in MIDDLEWARE) turns
whatever else answers an error on an API path (Django's 404/500 pages, its DEBUG pages) into the
same JSON, and answers a disallowed Host header with a short 400 before anything else runs."""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import (DisallowedHost, PermissionDenied, RequestDataTooBig, TooManyFieldsSent,
                                    TooManyFilesSent)
from django.http import Http404, HttpResponseBadRequest, JsonResponse
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
    if isinstance(exc, (TooManyFilesSent, TooManyFieldsSent, RequestDataTooBig)):
        status, code, message = form_limit_error(exc)
        return Response(error_body(code, message), status=status)
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


def form_limit_error(exc) -> tuple[int, str, str]:
    """(status, code, message naming the limit) for Django's form-parsing limits."""
    if isinstance(exc, TooManyFilesSent):
        return 400, "too_many_files", (f"too many files in one request (the limit is "
                                       f"{settings.DATA_UPLOAD_MAX_NUMBER_FILES})")
    if isinstance(exc, TooManyFieldsSent):
        return 400, "too_many_fields", (f"too many form fields in one request (the limit is "
                                        f"{settings.DATA_UPLOAD_MAX_NUMBER_FIELDS})")
    return 413, "upload_too_large", (f"the form fields other than files are over the limit of "
                                     f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 1024} kB")


# --------------------------------------------------------------------------------------------
# JSON errors on every API path, whatever DEBUG is
# --------------------------------------------------------------------------------------------
API_PREFIXES = ("/api/", "/ws/")
API_PATHS = ("/healthz", "/readyz", "/metrics")
_CODES = {400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
          405: "method_not_allowed", 413: "upload_too_large", 500: "internal_error"}
_MESSAGES = {400: "Bad request.", 403: "You may not do this.", 404: "Not found.",
             405: "Method not allowed.", 500: "Internal server error."}


def is_api_path(path: str) -> bool:
    """``/api/...``, ``/ws/...``, ``/healthz``, ``/readyz``, ``/metrics`` (and anything under them)."""
    return path.startswith(API_PREFIXES) or path.rstrip("/") + "/" in API_PREFIXES or any(
        path == p or path.startswith(p + "/") for p in API_PATHS)


class ApiJsonErrorsMiddleware:
    """First in MIDDLEWARE. A Host header not in ALLOWED_HOSTS: a short 400 at once (JSON on API
    paths, one line of text elsewhere; not Django's DEBUG page). An error answer on an API path
    that is not JSON (Django's 404/500 pages, the DEBUG pages, a 405 from a plain view) is
    replaced by the API's JSON error with the same status."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            request.get_host()
        except DisallowedHost:
            if is_api_path(request.path_info):
                return json_error(400, "bad_host", "The Host header is not one this service answers to.", "Host")
            return HttpResponseBadRequest(b"Bad Request: the Host header is not allowed.\n",
                                          content_type="text/plain; charset=utf-8")
        response = self.get_response(request)
        if (response.status_code >= 400 and is_api_path(request.path_info) and not response.streaming
                and not response.get("Content-Type", "").startswith("application/json")):
            status = response.status_code
            replaced = json_error(status, _CODES.get(status, "error"), _MESSAGES.get(status, response.reason_phrase))
            for header in ("Allow", "WWW-Authenticate", "Retry-After"):
                if header in response:
                    replaced[header] = response[header]
            return replaced
        return response
