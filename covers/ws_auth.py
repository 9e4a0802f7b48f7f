"""Who is on the other end of a WebSocket: the same principals as the REST API.

Three ways in, tried in this order by :class:`CallerMiddleware` (which sets ``scope["cover_caller"]``
to a :class:`covers.auth.Caller`, or None):

1. ``X-API-Key`` header - non-browser clients (browsers cannot set WebSocket headers);
2. ``?token=`` - a short-lived signed token from ``POST /api/v1/cover/ws-token`` (browsers that
   hold a key; the raw key never goes into a URL, where it would land in proxy logs);
3. the Django session (``scope["user"]`` from channels' AuthMiddlewareStack) of a staff user or a
   user who owns a usable key - the same rule as ``StaffSessionAuthentication`` for the REST API.

A bad header or token is a failed authentication (close 4401), never a silent fall-through to the
session. ``scope["cover_auth_error"]`` says why, for the consumer's log. A session caller's
``scope["cover_session_key"]`` lets :func:`caller_still_allowed` notice a logout.

:func:`caller_still_allowed` is asked again by the consumers before each event they forward and
every COVER_WS_RECHECK_SECONDS: a key revoked, expired or deleted, a user deactivated or no longer
allowed, a session ended: the socket closes with 4401.

:class:`OriginValidator` is channels' AllowedHostsOriginValidator except that a handshake without
an ``Origin`` header (not a browser: browsers always send one) is let through to authentication.
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator as _ChannelsOriginValidator
from django.conf import settings
from django.core import signing
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions

from .auth import Caller, key_from_string
from .models import APIKey

log = logging.getLogger(__name__)

TOKEN_SALT = "covers.ws-token"
TOKEN_MAX_AGE_SECONDS = 300


class InvalidToken(Exception):
    pass


# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------
def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=TOKEN_SALT)


def ws_token_issue(*, caller: Caller) -> str:
    """A signed, timestamped token naming the caller: ``k:<key prefix>`` or ``u:<user id>``."""
    if caller.api_key is not None:
        subject = f"k:{caller.api_key.prefix}"
    elif caller.user is not None and getattr(caller.user, "is_authenticated", False):
        subject = f"u:{caller.user.pk}"
    else:
        raise ValueError("no caller to issue a token for")
    return _signer().sign(subject)


def ws_token_caller(token: str, *, max_age: float | None = None) -> Caller:
    """The caller a token names, if it is authentic, not older than ``max_age`` seconds and its
    key/user is still usable. Raises InvalidToken otherwise."""
    age = TOKEN_MAX_AGE_SECONDS if max_age is None else max_age
    try:
        subject = _signer().unsign(token, max_age=age)
    except signing.SignatureExpired:
        raise InvalidToken("token expired") from None
    except signing.BadSignature:
        raise InvalidToken("bad token") from None
    kind, _, ident = subject.partition(":")
    if kind == "k":
        key = APIKey.objects.select_related("owner").filter(prefix=ident).first()
        if key is None or key.revoked or key.has_expired:
            raise InvalidToken("key no longer usable")
        return Caller(api_key=key, user=key.owner)
    if kind == "u":
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.filter(pk=ident, is_active=True).first()
        if user is None or not session_user_allowed(user):
            raise InvalidToken("user no longer allowed")
        return Caller(api_key=None, user=user)
    raise InvalidToken("bad token")


def session_user_allowed(user) -> bool:
    """Staff, or a user who owns a usable API key (as covers.auth.StaffSessionAuthentication)."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return user.is_staff or APIKey.objects.filter(owner=user, revoked=False).filter(
        Q(expiry_date__isnull=True) | Q(expiry_date__gt=timezone.now())).exists()


def caller_still_allowed(caller: Caller, *, session_key: str | None = None) -> bool:
    """Whether the principal a socket was opened for may still use it (one small query; two for a
    session). The same rules as at connect: a usable key; an active, allowed user; a live session."""
    if caller.api_key is not None:
        key = APIKey.objects.filter(pk=caller.api_key.pk).only("revoked", "expiry_date").first()
        return key is not None and not key.revoked and not key.has_expired
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(pk=getattr(caller.user, "pk", None)).first()
    if user is None or not session_user_allowed(user):
        return False
    if session_key is not None:
        from importlib import import_module

        return import_module(settings.SESSION_ENGINE).SessionStore().exists(session_key)
    return True


# --------------------------------------------------------------------------------------------
# ASGI middleware
# --------------------------------------------------------------------------------------------
def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin1").strip()
    return ""


def _resolve_caller(raw_key: str, token: str, user) -> tuple[Caller | None, str]:
    if raw_key:
        try:
            return Caller(api_key=(key := key_from_string(raw_key)), user=key.owner), ""
        except exceptions.AuthenticationFailed as exc:
            return None, str(exc.detail)
    if token:
        try:
            return ws_token_caller(token), ""
        except InvalidToken as exc:
            return None, str(exc)
    if user is not None and session_user_allowed(user):
        return Caller(api_key=None, user=user), ""
    return None, "no credentials"


class CallerMiddleware:
    """Sets ``scope["cover_caller"]`` (a Caller or None) and ``scope["cover_auth_error"]``.

    Goes inside AuthMiddlewareStack (it reads the session's ``scope["user"]``)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            raw_key = _header(scope, b"x-api-key")
            token = (parse_qs(scope.get("query_string", b"").decode("latin1")).get("token") or [""])[0]
            user = scope.get("user")
            if user is not None and not raw_key and not token:
                # resolve channels' lazy user here, not inside the DB thread below
                user = user if getattr(user, "is_authenticated", False) else None
            caller, error = await database_sync_to_async(_resolve_caller)(raw_key, token, user)
            session_key = None
            if caller is not None and not raw_key and not token and scope.get("session") is not None:
                session_key = scope["session"].session_key
            scope = {**scope, "cover_caller": caller, "cover_auth_error": error, "cover_session_key": session_key}
        return await self.app(scope, receive, send)


class OriginValidator(_ChannelsOriginValidator):
    """ALLOWED_HOSTS origin check; a missing Origin (a non-browser client) goes on to auth."""

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def AllowedHostsOriginValidator(app):  # noqa: N802 (mirrors channels' factory)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return OriginValidator(app, allowed)
