"""Deleting old files: the inputs, stems and results of jobs finished more than
COVER_RESULT_TTL_HOURS ago (the row stays, marked ``expired_at``; its file endpoints answer 410),
and orphan files in storage (under ``covers/``, referenced by no job) older than the TTL.
Files of queued or running jobs are never touched.

Periodic runs need no system cron: :func:`run_periodic_cleanup` is an RQ job that schedules
its successor with ``Queue.enqueue_in`` (COVER_CLEANUP_INTERVAL_SECONDS later) before it works;
the RQ scheduler that the cover worker runs (``--with-scheduler``, forced on by
COVER_WORKER_WITH_SCHEDULER) moves it onto the queue when due. The worker calls
:func:`ensure_cleanup_scheduled` at start and on every reconcile tick, which starts the chain
(or restarts it after Redis lost it). ``manage.py purge_expired_jobs`` runs the same by hand.
"""
from __future__ import annotations

import logging
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import close_old_connections
from django.utils import timezone

from .models import CleanupRun, CoverJob

log = logging.getLogger(__name__)

PREFIX = "covers"
FILE_FIELDS = ("song", "reference_voice", "result", "vocals", "instrumental", "converted_vocals")
JOB_FUNC = "covers.cleanup.run_periodic_cleanup"
NEXT_KEY = "cover:cleanup:next"     # id of the next scheduled cleanup job
LOCK_KEY = "cover:cleanup:schedule-lock"
CLEANUP_JOB_TIMEOUT = 1800
RUN_HISTORY_DAYS = 30  # CleanupRun rows older than this are dropped by the next run


@dataclass
class _Tally:
    jobs: int = 0
    files: int = 0
    orphans: int = 0
    stem_entries: int = 0
    bytes: int = 0
    errors: list = field(default_factory=list)
    deleted: list = field(default_factory=list)  # storage names (also what a dry run would delete)


def _size(storage, name: str) -> int:
    try:
        return int(storage.size(name))
    except Exception:
        return 0


def _delete(storage, name: str, tally: _Tally, *, dry_run: bool, orphan: bool = False) -> None:
    try:
        if not storage.exists(name):
            return
        size = _size(storage, name)
        if not dry_run:
            storage.delete(name)
        tally.bytes += size
        tally.deleted.append(name)
        if orphan:
            tally.orphans += 1
        else:
            tally.files += 1
    except Exception as exc:
        tally.errors.append(f"{name}: {exc.__class__.__name__}: {str(exc)[:200]}")


def _rmdir_if_empty(storage, folder: str) -> None:
    try:
        os.rmdir(storage.path(folder))  # FileSystemStorage only; fails harmlessly when not empty
    except Exception:
        pass


def expire_jobs(*, now: datetime, tally: _Tally, dry_run: bool) -> None:
    """Terminal jobs finished before ``now - TTL``: claim the row (conditional UPDATE: never a
    queued/running one, never twice), then delete its files."""
    cutoff = now - timedelta(hours=settings.COVER_RESULT_TTL_HOURS)
    qs = CoverJob.objects.filter(status__in=CoverJob.TERMINAL, finished_at__lt=cutoff, expired_at__isnull=True)
    for job in qs.only("id", *FILE_FIELDS).iterator():
        names = [getattr(job, f).name for f in FILE_FIELDS if getattr(job, f).name]
        if not dry_run:
            claimed = CoverJob.objects.filter(pk=job.pk, status__in=CoverJob.TERMINAL,
                                              expired_at__isnull=True).update(
                expired_at=now, updated_at=now, **{f: "" for f in FILE_FIELDS})
            if claimed != 1:
                continue
        tally.jobs += 1
        for name in names:
            _delete(default_storage, name, tally, dry_run=dry_run)
        if not dry_run:
            _rmdir_if_empty(default_storage, f"{PREFIX}/{job.pk}")


def remove_orphans(*, now: datetime, tally: _Tally, dry_run: bool) -> None:
    """Files under ``covers/`` that no job references, last modified before ``now - TTL``.
    Folders of queued/running jobs are skipped entirely (a worker may be writing there)."""
    storage = default_storage
    cutoff = now - timedelta(hours=settings.COVER_RESULT_TTL_HOURS)
    try:
        folders, loose = storage.listdir(PREFIX)
    except FileNotFoundError:
        return
    except Exception as exc:
        tally.errors.append(f"{PREFIX}/: {exc.__class__.__name__}: {str(exc)[:200]}")
        return
    jobs: dict[str, CoverJob] = {}
    ids = []
    for d in folders:
        try:
            ids.append(uuid.UUID(d))
        except ValueError:
            pass
    for job in CoverJob.objects.filter(pk__in=ids).only("id", "status", *FILE_FIELDS):
        jobs[str(job.pk)] = job
    candidates = [posixpath.join(PREFIX, f) for f in loose]
    for d in folders:
        job = jobs.get(d)
        if job is not None and job.status in CoverJob.ACTIVE:
            continue
        referenced = {getattr(job, f).name for f in FILE_FIELDS} if job is not None else set()
        try:
            _, files = storage.listdir(posixpath.join(PREFIX, d))
        except Exception as exc:
            tally.errors.append(f"{PREFIX}/{d}/: {exc.__class__.__name__}: {str(exc)[:200]}")
            continue
        candidates += [n for n in (posixpath.join(PREFIX, d, f) for f in files) if n not in referenced]
    for name in candidates:
        try:
            modified = storage.get_modified_time(name)
        except Exception as exc:
            tally.errors.append(f"{name}: {exc.__class__.__name__}: {str(exc)[:200]}")
            continue
        if timezone.is_naive(modified):
            modified = timezone.make_aware(modified, timezone.get_default_timezone())
        if modified < cutoff:
            _delete(storage, name, tally, dry_run=dry_run, orphan=True)
    if not dry_run:
        for d in folders:
            job = jobs.get(d)
            if job is None or job.status not in CoverJob.ACTIVE:
                _rmdir_if_empty(storage, posixpath.join(PREFIX, d))


def expire_stem_cache(*, now: datetime, tally: _Tally, dry_run: bool) -> None:
    """Stem cache entries (covers.stem_cache, ``stem-cache/<key>/``) older than the TTL, and
    incomplete ones (no meta.json) older than that: all their files go."""
    from .stem_cache import PREFIX as STEM_PREFIX

    storage = default_storage
    cutoff = now - timedelta(hours=settings.COVER_RESULT_TTL_HOURS)
    try:
        keys, _ = storage.listdir(STEM_PREFIX)
    except FileNotFoundError:
        return
    except Exception as exc:
        tally.errors.append(f"{STEM_PREFIX}/: {exc.__class__.__name__}: {str(exc)[:200]}")
        return
    for key in keys:
        folder = posixpath.join(STEM_PREFIX, key)
        try:
            _, files = storage.listdir(folder)
            names = [posixpath.join(folder, f) for f in files]
            meta = posixpath.join(folder, "meta.json")
            stamp = storage.get_modified_time(meta if meta in names else names[0]) if names else None
        except Exception as exc:
            tally.errors.append(f"{folder}/: {exc.__class__.__name__}: {str(exc)[:200]}")
            continue
        if stamp is not None and timezone.is_naive(stamp):
            stamp = timezone.make_aware(stamp, timezone.get_default_timezone())
        if stamp is not None and stamp >= cutoff:
            continue
        files_before = tally.files
        for name in sorted(names, key=lambda n: not n.endswith("/meta.json")):  # meta first: a miss at once
            _delete(storage, name, tally, dry_run=dry_run)
        tally.stem_entries += 1
        tally.files = files_before  # counted as stem cache entries, not job files
        if not dry_run:
            _rmdir_if_empty(storage, folder)


def cleanup_run(*, trigger: str = "periodic", dry_run: bool = False, now: datetime | None = None) -> CleanupRun:
    """One cleanup pass. Recorded as a CleanupRun (not saved for a dry run, which changes
    nothing; its ``deleted`` attribute lists what would go)."""
    started = timezone.now()
    now = now or started
    tally = _Tally()
    for step in (expire_jobs, remove_orphans, expire_stem_cache):
        try:
            step(now=now, tally=tally, dry_run=dry_run)
        except Exception as exc:
            log.exception("cleanup step %s failed", step.__name__)
            tally.errors.append(f"{step.__name__}: {exc.__class__.__name__}: {str(exc)[:200]}")
    run = CleanupRun(started_at=started, finished_at=timezone.now(), trigger=trigger, dry_run=dry_run,
                     jobs_expired=tally.jobs, files_deleted=tally.files, orphans_deleted=tally.orphans,
                     stem_cache_expired=tally.stem_entries, bytes_freed=tally.bytes, errors=tally.errors[:100])
    if not dry_run:
        run.save()
        # Keep the history bounded (a run every 10 minutes is ~4,300 rows a month).
        CleanupRun.objects.filter(started_at__lt=started - timedelta(days=RUN_HISTORY_DAYS)).delete()
        if tally.jobs or tally.files or tally.orphans or tally.stem_entries or tally.errors:
            log.info("cleanup: %s jobs expired, %s files + %s orphans + %s stem cache entries deleted, "
                     "%s bytes, %s errors", tally.jobs, tally.files, tally.orphans, tally.stem_entries,
                     tally.bytes, len(tally.errors))
    run.deleted = tally.deleted
    return run


# --------------------------------------------------------------------------------------------
# periodic scheduling through RQ (no system cron)
# --------------------------------------------------------------------------------------------
def _schedule_next(conn) -> str:
    from .queue import cover_queue

    job = cover_queue().enqueue_in(
        timedelta(seconds=max(1, int(settings.COVER_CLEANUP_INTERVAL_SECONDS))), JOB_FUNC,
        job_id=f"cover-cleanup-{uuid.uuid4().hex[:12]}", job_timeout=CLEANUP_JOB_TIMEOUT,
        result_ttl=max(600, 3 * int(settings.COVER_CLEANUP_INTERVAL_SECONDS)), failure_ttl=7 * 86400,
        description="periodic cleanup of expired cover files")
    conn.set(NEXT_KEY, job.id)
    return job.id


def ensure_cleanup_scheduled() -> str | None:
    """Schedule the next periodic cleanup unless one is already scheduled, queued or running.
    Returns the id of a newly scheduled job, or None. Safe to call from many workers."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from .queue import redis_connection

    conn = redis_connection()
    current = conn.get(NEXT_KEY)
    if current:
        try:
            status = Job.fetch(current.decode(), connection=conn).get_status(refresh=False)
        except NoSuchJobError:
            status = None
        if status in ("scheduled", "queued", "started", "deferred"):
            return None
    if not conn.set(LOCK_KEY, "1", nx=True, ex=10):
        return None
    try:
        return _schedule_next(conn)
    finally:
        conn.delete(LOCK_KEY)


def run_periodic_cleanup() -> dict:
    """RQ job: schedule the next run first (the chain survives a failing pass), then clean."""
    from .queue import redis_connection

    close_old_connections()
    try:
        try:
            _schedule_next(redis_connection())
        except Exception as exc:
            log.warning("could not schedule the next cleanup: %s", exc)
        run = cleanup_run(trigger="periodic")
        return {"run": run.pk, "jobs_expired": run.jobs_expired, "files_deleted": run.files_deleted,
                "orphans_deleted": run.orphans_deleted,
                "stem_cache_expired": run.stem_cache_expired, "bytes_freed": run.bytes_freed,
                "errors": len(run.errors)}
    finally:
        close_old_connections()
