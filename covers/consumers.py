"""WebSocket consumers: follow one job, or all of the caller's jobs.

Thin, like the APIs: the caller comes from covers.ws_auth (``scope["cover_caller"]``), reads go
through covers.selectors, events come from covers.notifications (message type ``job.update``).

On connect a consumer joins its groups *first*, then reads the snapshot from the database and
sends it, so no change can fall between the two; events older than what was already sent for a
job (they may have been queued while the snapshot was read) are skipped, so a client never sees
a job go backwards. The per-job consumer closes normally (1000) after a terminal status.

Close codes: 4401 not authenticated, or no longer (the key was revoked, expired or deleted, the user
logged out or was deactivated), 4404 unknown job or another caller's (like the HTTP API's 404, so a
socket cannot tell whether someone else's job exists) or a path with no route.

A caller that loses access is cut off three ways: a ``principal.revoked`` event (sent after the
commit by covers.principals to the group of the caller's key or user, which every consumer joins)
closes the socket at once, and any event sent after it is queued behind it on the consumer's
channel; before forwarding a job event the key's expiry date is compared with the clock and the
caller is read again from the database (at most once per EVENT_RECHECK_SECONDS); and a timer
re-checks every COVER_WS_RECHECK_SECONDS (a key's expiry date passing is no write, so nothing
else would notice on a quiet socket).
Progress is throttled where it is written (covers.services.cover_job_progress: one write and
one event per COVER_PROGRESS_MIN_INTERVAL per job; stage and status changes always pass).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from . import notifications
from .models import APIKey, CoverJob
from .selectors import cover_job_list, cover_job_visible
from .ws_auth import caller_still_allowed

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
LIST_SNAPSHOT_SIZE = 20
EVENT_RECHECK_SECONDS = 1.0  # a live event re-reads the caller from the database at most this often

_STAGES = list(CoverJob.Stage.values)
_RANK = {CoverJob.Status.QUEUED: 0, CoverJob.Status.RUNNING: 1}


def _order_key(event: dict) -> tuple:
    """How far along a job event is: (status rank, progress, stage index). Terminal is last."""
    status = event.get("status")
    rank = _RANK.get(status, 2)
    stage = event.get("stage")
    return rank, int(event.get("progress") or 0), _STAGES.index(stage) if stage in _STAGES else -1


def _job_snapshot(caller, job_id: str) -> tuple[dict | None, int]:
    """(event, 0) for a visible job, (None, 4404) for someone else's or none (existence not revealed)."""
    try:
        uid = uuid.UUID(job_id)
    except ValueError:
        return None, CLOSE_NOT_FOUND
    job = cover_job_visible(caller=caller).filter(pk=uid).first()
    if job is not None:
        return notifications.job_event(job), 0
    return None, CLOSE_NOT_FOUND


def _list_snapshot(caller) -> list[dict]:
    jobs = list(cover_job_list(caller=caller)[:LIST_SNAPSHOT_SIZE])
    return [notifications.job_event(job) for job in reversed(jobs)]  # oldest first


def _principal_group(caller) -> str:
    if caller.api_key is not None:
        return notifications.principal_key_group(caller.api_key.prefix)
    return notifications.principal_user_group(caller.user.pk)


def _caller_groups(caller) -> list[str]:
    if caller.api_key is not None:
        return [notifications.owner_group(caller.api_key.prefix)]
    # a session user sees their own jobs and those of the keys they own (covers.selectors)
    prefixes = APIKey.objects.filter(owner=caller.user).values_list("prefix", flat=True)
    return [notifications.user_group(caller.user.pk)] + [notifications.owner_group(p) for p in prefixes]


class _JobEventsConsumer(AsyncJsonWebsocketConsumer):
    """Shared: authentication, group bookkeeping, ordered forwarding of job.update events."""

    groups_joined: list[str]

    async def connect(self):
        self.groups_joined = []
        self.last_sent: dict[str, tuple] = {}
        self.cut_off = False
        self.checked_at = float("-inf")
        self.recheck_task = None
        self.caller = self.scope.get("cover_caller")
        # Accept first: a close before the handshake's answer reaches the client as HTTP 403
        # with no close code, and the codes are the point.
        await self.accept()
        if self.caller is None:
            log.info("websocket refused: %s", self.scope.get("cover_auth_error") or "no credentials")
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # the principal's group first: a revoke committed from here on reaches this socket
        await self.join([_principal_group(self.caller)])
        if not await self.still_allowed():  # revoked between the handshake's check and the join
            await self.cut(reason="no longer allowed")
            return
        self.recheck_task = asyncio.ensure_future(self._recheck_loop())
        await self.start()

    async def start(self):
        raise NotImplementedError

    async def join(self, groups: list[str]) -> None:
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)

    async def disconnect(self, code):
        task = getattr(self, "recheck_task", None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.recheck_task = None
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = []

    # --- the caller may lose access while the socket is open -------------------------------
    async def still_allowed(self) -> bool:
        try:
            ok = await database_sync_to_async(caller_still_allowed)(
                self.caller, session_key=self.scope.get("cover_session_key"))
            if ok:
                self.checked_at = time.monotonic()
            return ok
        except Exception as exc:  # database away: keep the socket (HTTP requests fail meanwhile)
            log.warning("websocket caller re-check failed: %s", exc)
            return True

    async def allowed_for_event(self) -> bool:
        """Before a live event: the key's expiry date (held since connect) exactly, the database at
        most every EVENT_RECHECK_SECONDS (thousands of events a second must not cost a query
        each). A revoke cannot slip through that interval: its ``principal.revoked`` is queued on
        this consumer's channel before any event sent after it (channels-redis orders a channel
        by send time) and closes the socket first."""
        key = self.caller.api_key
        if key is not None and key.expiry_date is not None and key.expiry_date <= timezone.now():
            return False
        if time.monotonic() - self.checked_at < EVENT_RECHECK_SECONDS:
            return True
        return await self.still_allowed()

    async def cut(self, *, reason: str) -> None:
        """Close 4401 and stop forwarding (events may still be queued for this channel)."""
        if self.cut_off:
            return
        self.cut_off = True
        log.info("websocket closed: %s", reason)
        await self.disconnect(CLOSE_UNAUTHENTICATED)
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _recheck_loop(self) -> None:
        """Every COVER_WS_RECHECK_SECONDS, a ``principal.recheck`` message to this consumer's own
        channel: the check itself runs in the consumer's dispatch like any event (a database call
        from this side task, concurrent with the dispatch, made channel-layer receives stall)."""
        interval = float(settings.COVER_WS_RECHECK_SECONDS)
        while not self.cut_off:
            await asyncio.sleep(interval)
            try:
                await self.channel_layer.send(self.channel_name, {"type": "principal.recheck"})
            except Exception as exc:  # Redis away: try again next time
                log.warning("websocket re-check not scheduled: %s", exc)

    async def principal_recheck(self, event):
        if not self.cut_off and not await self.still_allowed():
            await self.cut(reason="the caller is no longer allowed (re-check)")

    async def principal_revoked(self, event):
        await self.cut(reason=event.get("reason") or "revoked")

    async def forward(self, event: dict, *, live: bool = True) -> bool:
        """Send ``event`` unless it is older than, or the same as, what this client already has, or
        the caller has lost access meanwhile (checked for live events; a snapshot follows the check
        at connect)."""
        if self.cut_off:
            return False
        job_id = event.get("job_id")
        key = _order_key(event)
        last = self.last_sent.get(job_id)
        if last is not None and (last[0] == 2 or key <= last):
            return False  # stale, a repeat, or after a terminal status (which is final)
        if live and not await self.allowed_for_event():
            await self.cut(reason="the caller is no longer allowed")
            return False
        self.last_sent[job_id] = key
        await self.send_json({k: event.get(k) for k in
                              ("type", "job_id", "status", "stage", "progress", "error_message", "ts")})
        return True

    async def receive_json(self, content, **kwargs):
        pass  # clients only listen


class JobConsumer(_JobEventsConsumer):
    """``ws/cover/jobs/<job_id>/``: the snapshot, then each change, closed after a terminal one."""

    async def start(self):
        try:
            self.job_id = str(uuid.UUID(self.scope["url_route"]["kwargs"]["job_id"]))
        except ValueError:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # join before reading: a change committed after the read still reaches this client
        await self.join([notifications.job_group(self.job_id)])
        event, refused = await database_sync_to_async(_job_snapshot)(self.caller, self.job_id)
        if refused:
            await self.close(code=refused)
            return
        await self._deliver(event, live=False)

    async def job_update(self, event):
        await self._deliver(event, live=True)

    async def _deliver(self, event: dict, *, live: bool) -> None:
        if event.get("job_id") != self.job_id:
            return
        if await self.forward(event, live=live) and event.get("status") in CoverJob.TERMINAL:
            await self.disconnect(CLOSE_NORMAL)
            await self.close(code=CLOSE_NORMAL)


class JobListConsumer(_JobEventsConsumer):
    """``ws/cover/jobs/``: the caller's recent jobs (oldest first), then every change of any of
    their jobs, new ones included. Never closes by itself."""

    async def start(self):
        groups = await database_sync_to_async(_caller_groups)(self.caller)
        await self.join(groups)
        for event in await database_sync_to_async(_list_snapshot)(self.caller):
            await self.forward(event, live=False)

    async def job_update(self, event):
        await self.forward(event)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Any other ``ws/...`` path: accepted and closed with 4404, like an unknown job (channels'
    URLRouter would raise "No route found", which the server answers with HTTP 500 and a logged
    traceback)."""

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
