"""Reads, always scoped to the caller: a key sees only its own jobs; a session user sees the jobs
they created and those of the keys they own. Others' jobs are indistinguishable from unknown ones."""
from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from .errors import InvalidParameter, NotFound
from .models import CoverJob


def cover_job_visible(*, caller) -> QuerySet[CoverJob]:
    qs = CoverJob.objects.select_related("owner")
    if caller.api_key is not None:
        return qs.filter(owner=caller.api_key)
    user = caller.user
    if user is not None and getattr(user, "is_authenticated", False):
        return qs.filter(Q(user=user) | Q(owner__owner=user))
    return qs.none()


def cover_job_list(*, caller, status: str | None = None) -> QuerySet[CoverJob]:
    qs = cover_job_visible(caller=caller)
    if status:
        wanted = [s.strip() for s in status.split(",") if s.strip()]
        bad = [s for s in wanted if s not in CoverJob.Status.values]
        if bad:
            raise InvalidParameter(f"status must be one of {', '.join(CoverJob.Status.values)}", field="status")
        qs = qs.filter(status__in=wanted)
    return qs.order_by("-created_at", "-id")


def cover_job_get(*, job_id, caller) -> CoverJob:
    try:
        uid = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound("No such job.", field="job_id") from None
    try:  # get(), not first(): no ORDER BY to compile on the hottest read (status polling)
        return cover_job_visible(caller=caller).get(pk=uid)
    except CoverJob.DoesNotExist:
        raise NotFound("No such job.", field="job_id") from None


def cover_job_wait(*, job_id, seconds: float, caller, poll: float = 0.25) -> CoverJob:
    """The job once it has ended or ``seconds`` have passed (``Prefer: wait=N``): polls its
    status column (one indexed primary-key read per ``poll``), then loads the row."""
    import time

    deadline = time.monotonic() + max(0.0, float(seconds))
    while True:
        status = CoverJob.objects.filter(pk=job_id).values_list("status", flat=True).first()
        left = deadline - time.monotonic()
        if status is None or status in CoverJob.TERMINAL or left <= 0:
            break
        time.sleep(min(poll, left))
    return cover_job_get(job_id=job_id, caller=caller)
