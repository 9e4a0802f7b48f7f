"""The only sender to the channel layer (Zulip's rule: only state changes, only after commit).

``notify_job_changed(job)`` schedules one ``job.update`` event for the job's groups once the
current transaction commits (at once in autocommit). It never raises into the caller: a lost
event costs nothing because WebSocket consumers send the database's snapshot on connect.

``notify_principal_revoked(key_prefixes=..., user_ids=...)`` tells every open WebSocket of a key
that was revoked, expired or deleted, or of a user who logged out or was deactivated, to close
(``principal.revoked`` to the groups ``cover_principal_key_<prefix>`` / ``cover_principal_user_<id>``,
which each consumer joins for its own caller). A lost one is covered by the consumers' own
re-check of their caller (before each event and every COVER_WS_RECHECK_SECONDS).
"""
from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

log = logging.getLogger(__name__)

EVENT_TYPE = "job.update"
PRINCIPAL_REVOKED = "principal.revoked"


def job_group(job_id) -> str:
    return f"cover_job_{job_id}"


def owner_group(api_key_prefix: str) -> str:
    """Group of every job of one API key (named by the key's prefix: the primary key holds `$`)."""
    return f"cover_owner_{api_key_prefix}"


def user_group(user_id) -> str:
    return f"cover_user_{user_id}"


def principal_key_group(api_key_prefix: str) -> str:
    """Every WebSocket opened with one API key (header or a token naming the key)."""
    return f"cover_principal_key_{api_key_prefix}"


def principal_user_group(user_id) -> str:
    """Every WebSocket of one user (session or a token naming the user)."""
    return f"cover_principal_user_{user_id}"


def job_event(job) -> dict:
    return {
        "type": EVENT_TYPE,
        "job_id": str(job.id),
        "status": job.status,
        "stage": job.stage or None,
        "progress": int(job.progress),
        "error_message": job.error_message or "",
        "ts": timezone.now().isoformat(),
    }


def groups_for(job) -> list[str]:
    groups = [job_group(job.id)]
    prefix = _owner_prefix(job)
    if prefix:
        groups.append(owner_group(prefix))
    if job.user_id:
        groups.append(user_group(job.user_id))
    return groups


def _owner_prefix(job) -> str | None:
    if not job.owner_id:
        return None
    cached = job._state.fields_cache.get("owner") if hasattr(job, "_state") else None
    if cached is not None:
        return cached.prefix
    return job.owner_id.partition(".")[0]  # the APIKey primary key is "<prefix>.<hash>"


def notify_job_changed(job) -> None:
    """Send the job's current state to its groups after the transaction commits."""
    try:
        event = job_event(job)
        groups = groups_for(job)
    except Exception:  # never break the caller over a notification
        log.exception("could not build the job.update event")
        return
    transaction.on_commit(lambda: _send(groups, event), robust=True)


def notify_principal_revoked(*, key_prefixes=(), user_ids=(), reason: str = "revoked") -> None:
    """After commit: every open WebSocket of these keys / users closes (4401)."""
    groups = [principal_key_group(p) for p in key_prefixes if p] + [principal_user_group(u) for u in user_ids if u]
    if not groups:
        return
    event = {"type": PRINCIPAL_REVOKED, "reason": reason, "ts": timezone.now().isoformat()}
    transaction.on_commit(lambda: _send(groups, event), robust=True)


def _send(groups: list[str], event: dict) -> None:
    try:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            return

        async def send_all() -> None:
            for group in groups:
                await layer.group_send(group, event)

        async_to_sync(send_all)()
    except Exception as exc:  # Redis down, loop trouble: log, never raise into the job
        log.warning("%s for %s not sent: %s", event.get("type"), event.get("job_id") or groups, exc)
