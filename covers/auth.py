"""Who is calling: an API key in `X-API-Key`, or a logged-in session.

djangorestframework-api-key only offers a permission class, and its ``get_from_key()`` ignores
expiry, so authentication is ours: look the key up by prefix, verify the hash, then check
revoked and expired here. ``request.auth`` is the APIKey (or None for a session);
``request.user`` is the key's owner (may be None) or the session user.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from .models import APIKey

HEADER = "HTTP_X_API_KEY"


@dataclass(frozen=True)
class Caller:
    """The principal that owns what it creates and sees only what it owns."""

    api_key: APIKey | None = None
    user: object | None = None

    @classmethod
    def from_request(cls, request) -> "Caller":
        if isinstance(request.auth, APIKey):
            return cls(api_key=request.auth, user=request.auth.owner)
        return cls(api_key=None, user=request.user)


def key_from_string(raw: str) -> APIKey:
    """The usable key for ``raw`` or AuthenticationFailed (no hint which check failed)."""
    prefix, dot, _ = raw.partition(".")
    if not dot or not prefix:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    try:  # prefix is unique; get() compiles no ORDER BY (every authenticated request runs this)
        key = APIKey.objects.select_related("owner").get(prefix=prefix)
    except APIKey.DoesNotExist:
        key = None
    if key is None or not key.is_valid(raw):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if key.revoked:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    if key.has_expired:
        raise exceptions.AuthenticationFailed("This API key has expired.")
    return key


def touch_last_used(key: APIKey) -> None:
    """Record use at most once per COVER_KEY_LAST_USED_INTERVAL seconds (one conditional UPDATE)."""
    now = timezone.now()
    interval = timedelta(seconds=settings.COVER_KEY_LAST_USED_INTERVAL)
    if key.last_used_at is not None and now - key.last_used_at < interval:
        return
    APIKey.objects.filter(pk=key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - interval)).update(last_used_at=now)
    key.last_used_at = now


class APIKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = request.META.get(HEADER, "").strip()
        if not raw:
            return None  # let session auth try; the permission answers 401 if nobody is there
        key = key_from_string(raw)
        touch_last_used(key)
        return (key.owner, key)

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) when credentials are missing.
        return 'ApiKey header="X-API-Key"'


class StaffSessionAuthentication(authentication.SessionAuthentication):
    """A logged-in staff user, or a user who owns a usable API key (the web page); CSRF enforced."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        if user.is_staff or APIKey.objects.filter(owner=user, revoked=False).filter(
                Q(expiry_date__isnull=True) | Q(expiry_date__gt=timezone.now())).exists():
            return (user, None)
        return None


class IsCaller(permissions.BasePermission):
    """An API key was accepted, or a session user was."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, APIKey):
            return True
        user = request.user
        return bool(user is not None and getattr(user, "is_authenticated", False))


def login_locked_out_response(request, original_response=None, credentials=None):
    """django-axes' answer to a locked-out login (settings.AXES_LOCKOUT_CALLABLE): 429 with a
    Retry-After header; JSON ``{"error": {"code": "login_locked", ...}}`` on API paths and for
    clients asking for JSON, otherwise a short page saying when to try again. Takes axes' optional
    arguments but reads nothing from them (its async middleware passes them in another order)."""
    from axes.helpers import get_cool_off
    from django.shortcuts import render

    from .exceptions import json_error

    cool_off = get_cool_off(request)
    minutes = max(1, round(cool_off.total_seconds() / 60)) if cool_off else None
    message = ("Too many failed logins: this account or address is locked"
               + (f" for {minutes} minutes. Try again later." if minutes else ". Ask an administrator to unlock it."))
    wants_json = (request.path.startswith(("/api/", "/ws/"))
                  or request.headers.get("X-Requested-With") == "XMLHttpRequest" or "application/json" in request.headers.get("Accept", ""))
    if wants_json:
        response = json_error(429, "login_locked", message)
    else:
        response = render(request, "registration/locked_out.html", {"message": message, "minutes": minutes},
                          status=429)
    if cool_off:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response
