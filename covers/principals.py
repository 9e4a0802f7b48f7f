"""Writes about who may call: revoking and deleting API keys, users logging out or losing access.

Each one ends the principal's open WebSockets: ``covers.notifications.notify_principal_revoked``
sends ``principal.revoked`` after the commit, and the consumers close with 4401 (covers.consumers).
The admin calls these functions. Edits that bypass them (the admin's change form, Django's user
admin, a shell) are caught by the model signals connected in :func:`connect_signals`, and whatever
still slips through (a key expiring by time, which no write marks) by the consumers' periodic
re-check of their caller (COVER_WS_RECHECK_SECONDS).
"""
from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from . import notifications
from .models import APIKey

log = logging.getLogger(__name__)


def api_keys_revoke(*, keys) -> int:
    """Revoke the usable keys among ``keys`` (a queryset); their sockets close after the commit."""
    with transaction.atomic():
        prefixes = list(keys.filter(revoked=False).select_for_update().values_list("prefix", flat=True))
        n = APIKey.objects.filter(prefix__in=prefixes, revoked=False).update(revoked=True)
        notifications.notify_principal_revoked(key_prefixes=prefixes, reason="key revoked")
    log.info("revoked %d API key(s): %s", n, ", ".join(prefixes))
    return n


def api_key_delete(*, key: APIKey) -> None:
    """Delete a key (its jobs stay, owner NULL); its sockets close after the commit."""
    key.delete()  # post_delete sends the event (_key_deleted)


def user_logged_out_everywhere(*, user) -> None:
    """A user logged out: their sockets (session or token) close after the commit."""
    if user is not None and getattr(user, "pk", None) is not None:
        notifications.notify_principal_revoked(user_ids=[user.pk], reason="logged out")


# --------------------------------------------------------------------------------------------
# edits that do not go through the functions above
# --------------------------------------------------------------------------------------------
def _key_saved(sender, instance: APIKey, created: bool, **kwargs) -> None:
    if not created and (instance.revoked or instance.has_expired):
        notifications.notify_principal_revoked(key_prefixes=[instance.prefix], reason="key revoked or expired")


def _key_deleted(sender, instance: APIKey, **kwargs) -> None:
    notifications.notify_principal_revoked(key_prefixes=[instance.prefix], reason="key deleted")


def _user_saved(sender, instance, created: bool, **kwargs) -> None:
    if not created and not instance.is_active:
        notifications.notify_principal_revoked(user_ids=[instance.pk], reason="user deactivated")


def _user_deleted(sender, instance, **kwargs) -> None:
    notifications.notify_principal_revoked(user_ids=[instance.pk], reason="user deleted")


def _logged_out(sender, request, user, **kwargs) -> None:
    user_logged_out_everywhere(user=user)


def connect_signals() -> None:
    """Called once from CoversConfig.ready()."""
    post_save.connect(_key_saved, sender=APIKey, dispatch_uid="covers.principals.key_saved")
    post_delete.connect(_key_deleted, sender=APIKey, dispatch_uid="covers.principals.key_deleted")
    user_model = get_user_model()
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="covers.principals.user_saved")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="covers.principals.user_deleted")
    user_logged_out.connect(_logged_out, dispatch_uid="covers.principals.logged_out")
