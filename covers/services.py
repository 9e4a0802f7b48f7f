"""Writes. Every rule about cover jobs lives here (and in selectors for reads).

All status/stage changes go through :func:`cover_job_transition` (status) or
:func:`cover_job_progress` (stage/progress of a running job): single conditional UPDATEs
whose WHERE clause holds the legal source states, so two racing writers (a cancel and a
finishing worker) cannot both win, and a terminal state is final.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import notifications, webhooks
from .errors import Conflict, IdempotencyMismatch, InvalidParameter, LimitExceeded, QueueUnavailable
from .models import CoverJob
from .queue import FAILURE_CALLBACK, JOB_FUNC, cancel_flag_key, cover_queue, queue_for_job, redis_connection
from .uploads import UploadLimits, inspect_upload, storage_name

log = logging.getLogger(__name__)

S = CoverJob.Status
# to-status -> the statuses it may come from. Terminal statuses appear on no right-hand side.
LEGAL_FROM: dict[str, tuple[str, ...]] = {
    S.RUNNING: (S.QUEUED,),
    S.SUCCEEDED: (S.RUNNING,),
    S.FAILED: (S.QUEUED, S.RUNNING),
    S.CANCELED: (S.QUEUED, S.RUNNING),
}
FILE_FIELDS = ("song", "reference_voice", "result", "vocals", "instrumental", "converted_vocals")
MAX_ENQUEUE_ATTEMPTS = 3


# --------------------------------------------------------------------------------------------
# the state machine
# --------------------------------------------------------------------------------------------
def cover_job_transition(*, job_id, to: str, attempt: int | None = None, **fields) -> CoverJob | None:
    """Move job ``job_id`` to status ``to`` if (and only if) that is legal from its current status.

    One conditional UPDATE; ``attempt`` (worker calls) also requires the row to still belong to
    that attempt. ``fields`` are written in the same UPDATE (a result only ever arrives together
    with ``succeeded``). Returns the updated job, or None when the change was not legal
    (already terminal, raced, deleted). Sends the notification after commit.
    """
    if to not in LEGAL_FROM:
        raise ValueError(f"no transition into {to!r}")
    now = timezone.now()
    values = dict(fields)
    values["status"] = to
    values["updated_at"] = now
    if to == S.RUNNING:
        values.setdefault("started_at", now)
        values.setdefault("heartbeat_at", now)
    if to in CoverJob.TERMINAL:
        values.setdefault("finished_at", now)
        values.setdefault("expires_at", now + timedelta(hours=settings.COVER_RESULT_TTL_HOURS))
    if to == S.SUCCEEDED:
        values.setdefault("progress", 100)
    else:
        for name in ("result",):  # never a result outside succeeded (also a DB check constraint)
            values.pop(name, None)
    qs = CoverJob.objects.filter(pk=job_id, status__in=LEGAL_FROM[to])
    if attempt is not None:
        qs = qs.filter(attempt=attempt)
    if qs.update(**values) != 1:
        return None
    job = CoverJob.objects.select_related("owner").get(pk=job_id)
    notifications.notify_job_changed(job)
    if job.webhook_url and (to == S.RUNNING or to in CoverJob.TERMINAL):
        webhooks.webhook_job_event(job, "start" if to == S.RUNNING else "completed")
    if to in CoverJob.TERMINAL:
        _forget_throttle(job_id)
    return job


_last_progress: dict[str, tuple[float, str]] = {}
_throttle_lock = threading.Lock()


def _forget_throttle(job_id) -> None:
    with _throttle_lock:
        _last_progress.pop(str(job_id), None)


def cover_job_progress(*, job: CoverJob, stage: str, progress: float, timings: dict | None = None,
                       force: bool = False) -> bool:
    """Record the stage and overall progress (0..100) of a running job.

    Throttled to one write per COVER_PROGRESS_MIN_INTERVAL seconds per job; a stage change,
    new timings or ``force`` always write. Returns False when the job is no longer running
    for this attempt (canceled, failed by the reconciler, deleted): the worker should stop.
    """
    if stage not in CoverJob.Stage.values:
        raise ValueError(f"unknown stage {stage!r}")
    pct = max(0, min(100, int(progress)))
    key = str(job.id)
    now_m = time.monotonic()
    with _throttle_lock:
        last = _last_progress.get(key)
        if (not force and timings is None and last is not None and last[1] == stage
                and now_m - last[0] < settings.COVER_PROGRESS_MIN_INTERVAL):
            return True
        _last_progress[key] = (now_m, stage)
    now = timezone.now()
    values = {"stage": stage, "progress": pct, "heartbeat_at": now, "updated_at": now}
    if timings is not None:
        values["timings"] = timings
    changed = CoverJob.objects.filter(pk=job.id, status=S.RUNNING, attempt=job.attempt).update(**values)
    if changed != 1:
        return False
    job.stage, job.progress = stage, pct
    if timings is not None:
        job.timings = timings
    notifications.notify_job_changed(job)
    if job.webhook_url:
        webhooks.webhook_job_event(job, "progress")
    return True


def cover_job_heartbeat(*, job_id, attempt: int) -> bool:
    """The worker is alive and still running this attempt (no notification: nothing changed)."""
    return CoverJob.objects.filter(pk=job_id, status=S.RUNNING, attempt=attempt).update(
        heartbeat_at=timezone.now()) == 1


def cover_job_start(*, job_id, attempt: int, worker_name: str = "") -> CoverJob | None:
    return cover_job_transition(job_id=job_id, to=S.RUNNING, attempt=attempt, worker_name=worker_name[:128],
                                stage=CoverJob.Stage.PREPROCESS, progress=0)


def cover_job_fail(*, job_id, message: str, code: str = "error", attempt: int | None = None,
                   stage: str | None = None) -> CoverJob | None:
    message = (message or "").strip() or "the job failed for an unknown reason"
    fields = {"error_message": message[:2000], "error_code": code[:64]}
    if stage:
        fields["stage"] = stage
    return cover_job_transition(job_id=job_id, to=S.FAILED, attempt=attempt, **fields)


MAX_TRANSIENT_RETRIES = 1


def cover_job_retry_transient(*, job_id, attempt: int, code: str, message: str,
                              stage: str | None = None) -> bool:
    """A running attempt hit a transient error (GPU out of memory, ...): put the job back in the
    queue as a new attempt, once. Returns False (and changes nothing) when the job was already
    retried, is no longer running this attempt, or cannot be enqueued; the caller then fails it.

    The same conditional UPDATE pattern as every transition: only the row still ``running`` for
    ``attempt`` with no retry used moves, so a stale attempt can never requeue a newer one."""
    new_attempt = attempt + 1
    task_id = _new_task_id(job_id, new_attempt)
    note = (f"{stage}: {message}" if stage and not message.startswith(f"{stage}:") else message)
    moved = CoverJob.objects.filter(pk=job_id, status=S.RUNNING, attempt=attempt,
                                    retries__lt=MAX_TRANSIENT_RETRIES).update(
        status=S.QUEUED, attempt=new_attempt, task_id=task_id, retries=F("retries") + 1,
        stage="", progress=0, heartbeat_at=None, worker_name="", error_code=code[:64],
        error_message=f"retrying once after a transient error ({note})"[:2000], updated_at=timezone.now())
    if moved != 1:
        return False
    job = CoverJob.objects.select_related("owner").get(pk=job_id)
    try:
        _enqueue(job)
    except Exception as exc:  # Redis gone: the reconciler re-enqueues queued rows missing from Redis
        log.warning("re-enqueue of %s after a transient error failed: %s", job_id, exc)
    notifications.notify_job_changed(job)
    return True


# --------------------------------------------------------------------------------------------
# create / cancel / delete
# --------------------------------------------------------------------------------------------
def _check_key_limits(api_key) -> None:
    if api_key is None:
        return
    if api_key.max_concurrent_jobs is not None:
        active = CoverJob.objects.filter(owner=api_key, status__in=CoverJob.ACTIVE).count()
        if active >= api_key.max_concurrent_jobs:
            raise LimitExceeded(f"this API key may have at most {api_key.max_concurrent_jobs} queued or "
                                f"running jobs; wait for one to finish", code="too_many_active_jobs")
    if api_key.jobs_per_day is not None:
        since = timezone.now() - timedelta(days=1)
        recent = CoverJob.objects.filter(owner=api_key, created_at__gte=since).count()
        if recent >= api_key.jobs_per_day:
            raise LimitExceeded(f"this API key may create {api_key.jobs_per_day} jobs per 24 hours",
                                code="daily_limit")


def _ping_queue() -> None:
    try:
        redis_connection().ping()
    except Exception as exc:
        raise QueueUnavailable(
            f"The job queue (Redis) is unreachable, so no job was created; try again shortly ({exc.__class__.__name__})."
        ) from None


def _new_task_id(job_id, attempt: int) -> str:
    return f"cover-{job_id}-{attempt}"


def cover_job_create(*, caller, reference_voice, song=None, vocals=None, instrumental=None,
                     model_id: str | None = None,
                     pitch_shift: float | None = None, auto_pitch: bool | None = None,
                     reference_text: str = "", target_text: str = "",
                     separator: str | None = None, converter: str | None = None,
                     vocal_gain_db: float | None = None, instrumental_gain_db: float | None = None,
                     reverb: float | None = None, output_format: str | None = None,
                     output_sample_rate: int | None = None,
                     webhook_url: str = "", webhook_events: list[str] | None = None,
                     separator_model: str | None = None, karaoke_model: str | None = None,
                     dereverb_model: str | None = None, convert_backing: bool | None = None,
                     engine_params: dict | None = None,
                     idempotency_key: str = "", request_hash: str = "") -> CoverJob:
    """Validate the uploads by content, store them, insert the row and enqueue after commit.

    Redis unreachable -> QueueUnavailable and no row (checked before the insert, and the row is
    removed again if the enqueue after commit fails).
    ``model_id`` (none: the default model) must be a registered, enabled model or one the inherited
    GPT-SoVITS rules find (400 naming model_id otherwise); a registered model's engine is the
    converter unless ``converter`` is given, and its defaults fill pitch_shift/auto_pitch/reverb
    when those are None.
    Exactly one of ``song`` or ``vocals`` (the client's own stems, + optional ``instrumental``:
    separation is skipped). ``webhook_url`` (http(s), public hosts unless
    COVER_WEBHOOK_ALLOW_PRIVATE) gets signed POSTs for ``webhook_events`` (covers.webhooks).
    ``idempotency_key``: inserted with the row under a unique (key, idempotency key) constraint;
    a concurrent duplicate raises IdempotentReplay carrying the winner's record.
    """
    from .limits import check_song_duration, lock_key_and_recheck, upload_limits_for_key
    from .voice_models import check_engine_params, separator_model_for_request, voice_model_for_request

    if (song is None) == (vocals is None):
        raise InvalidParameter("send exactly one of song or vocals (your own vocal stem)",
                               field="song" if song is None else "vocals")
    if instrumental is not None and vocals is None:
        raise InvalidParameter("instrumental goes with vocals (your own stems), not with song",
                               field="instrumental")
    api_key = caller.api_key
    if webhook_url:
        if api_key is None:
            raise InvalidParameter("webhook_url needs an API key (deliveries are signed with its webhook "
                                   "secret)", field="webhook_url")
        webhook_url = webhooks.webhook_check_url(webhook_url)
        webhook_events = webhooks.webhook_check_events(webhook_events)
    else:
        webhook_events = []
    _check_key_limits(api_key)
    chosen = voice_model_for_request(model_id)
    sep_models = {field: separator_model_for_request(value, step=step)
                  for field, step, value in (("separator_model", "separate", separator_model),
                                             ("karaoke_model", "karaoke", karaoke_model),
                                             ("dereverb_model", "dereverb", dereverb_model))}
    sep_model = sep_models["separator_model"]
    if sep_model is not None and separator and separator != sep_model.engine:
        raise InvalidParameter(f"separator_model names a {sep_model.engine} model; separator {separator!r} cannot "
                               "run it", field="separator_model")
    limits = upload_limits_for_key(api_key)
    uploads = {}
    if song is not None:
        uploads["song"] = (song, inspect_upload("song", song, limits))
        check_song_duration(api_key, uploads["song"][1])
    else:
        uploads["vocals"] = (vocals, inspect_upload("vocals", vocals, limits))
        check_song_duration(api_key, uploads["vocals"][1])
        if instrumental is not None:
            uploads["instrumental"] = (instrumental, inspect_upload("instrumental", instrumental, limits))
    uploads["reference_voice"] = (reference_voice,
                                  inspect_upload("reference_voice", reference_voice, limits, reference=True))
    _ping_queue()

    job_id = uuid.uuid4()
    user = caller.user if getattr(caller.user, "is_authenticated", False) else None
    parameters = {
        "model_id": chosen.model_id,
        "pitch_shift": float(pitch_shift if pitch_shift is not None else chosen.defaults.get("pitch_shift", 0.0)),
        "auto_pitch": bool(auto_pitch if auto_pitch is not None else chosen.defaults.get("auto_pitch", False)),
        "reverb": float(reverb if reverb is not None else chosen.defaults.get("reverb", 0.0)),
        "reference_text": reference_text or "", "target_text": target_text or "",
        "separator": separator or settings.COVER_SEPARATOR,
        "converter": converter or chosen.engine or settings.COVER_CONVERTER,
        "vocal_gain_db": float(vocal_gain_db or 0.0), "instrumental_gain_db": float(instrumental_gain_db or 0.0),
        "output_format": output_format or "wav", "output_sample_rate": output_sample_rate or None,
        # RVC parameters: the request's, else the model's defaults (engine defaults fill the rest)
        "engine_params": {**chosen.defaults.get("engine_params", {}),
                          **check_engine_params(engine_params or {}, field_name="engine_params")},
        **{k: m.model_id for k, m in sep_models.items() if m is not None},
        "convert_backing": bool(convert_backing),
    }
    if sep_model is not None:
        parameters["separator"] = sep_model.engine
    if vocals is not None:
        parameters["stems"] = "vocals+instrumental" if instrumental is not None else "vocals"
        parameters["separator"] = "provided"
    job = CoverJob(
        id=job_id, owner=api_key, user=user, status=S.QUEUED, task_id=_new_task_id(job_id, 1), attempt=1,
        parameters=parameters, input_info={field: info for field, (_, info) in uploads.items()},
        webhook_url=webhook_url or "", webhook_events=webhook_events,
    )
    for field, (upload, info) in uploads.items():
        getattr(job, field).save(storage_name(field, upload, info), upload, save=False)
    try:
        with transaction.atomic():
            lock_key_and_recheck(api_key, _check_key_limits)  # no race for the last free slot
            job.save(force_insert=True)
            if idempotency_key and api_key is not None:
                from .models import IdempotencyKey
                with transaction.atomic():
                    IdempotencyKey.objects.create(api_key=api_key, key=idempotency_key,
                                                  request_hash=request_hash, job=job)
            transaction.on_commit(partial(_enqueue_after_commit, job))
    except QueueUnavailable:
        raise
    except IntegrityError:
        _delete_files(job)
        if idempotency_key and api_key is not None:
            record = idempotency_lookup(api_key=api_key, key=idempotency_key, request_hash=request_hash)
            if record is not None:
                raise IdempotentReplay(record) from None
        raise
    except BaseException:
        _delete_files(job)
        raise
    return job


# --------------------------------------------------------------------------------------------
# idempotency (Idempotency-Key on create)
# --------------------------------------------------------------------------------------------
class IdempotentReplay(Exception):
    """The create lost a race to an identical request: answer with ``record``'s job."""

    def __init__(self, record):
        super().__init__(str(record.pk))
        self.record = record


def idempotency_lookup(*, api_key, key: str, request_hash: str):
    """The live record of ``key`` for ``api_key`` (None if none or older than
    COVER_IDEMPOTENCY_HOURS, which are deleted); IdempotencyMismatch when it was used with
    other parameters."""
    from .models import IdempotencyKey

    cutoff = timezone.now() - timedelta(hours=settings.COVER_IDEMPOTENCY_HOURS)
    IdempotencyKey.objects.filter(api_key=api_key, created_at__lt=cutoff).delete()
    record = IdempotencyKey.objects.select_related("job", "job__owner").filter(api_key=api_key, key=key).first()
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise IdempotencyMismatch("this Idempotency-Key was already used with different parameters or files; "
                                  "use a new key for a new job", field="Idempotency-Key")
    return record


def idempotency_store_response(*, api_key, key: str, status: int, body: dict) -> None:
    from .models import IdempotencyKey

    IdempotencyKey.objects.filter(api_key=api_key, key=key, response_body__isnull=True).update(
        response_status=status, response_body=body)


def _enqueue(job: CoverJob) -> None:
    from rq import Callback

    cover_queue(queue_for_job(job)).enqueue_call(  # queues per device class
        func=JOB_FUNC, args=(str(job.id), job.attempt), job_id=job.task_id,
        timeout=settings.COVER_JOB_TIMEOUT, result_ttl=3600, failure_ttl=7 * 86400,
        on_failure=Callback(FAILURE_CALLBACK), description=f"cover job {job.id} attempt {job.attempt}",
    )
    CoverJob.objects.filter(pk=job.id).update(enqueued_at=timezone.now())


def _enqueue_after_commit(job: CoverJob) -> None:
    try:
        _enqueue(job)
    except Exception as exc:
        log.warning("enqueue of %s failed (%s); removing the row", job.id, exc)
        CoverJob.objects.filter(pk=job.id, status=S.QUEUED).delete()
        _delete_files(job)
        raise QueueUnavailable(
            "The job queue (Redis) is unreachable, so no job was created; try again shortly.") from None
    notifications.notify_job_changed(job)


def cover_job_cancel(*, job: CoverJob) -> CoverJob:
    """Cancel a queued or running job. Idempotent for canceled jobs; 409 for finished ones.

    A queued job never starts (the worker's queued->running transition fails). A running job
    sees the new status through the pipeline's cancel check (DB row, or the Redis flag).
    """
    if job.status == S.CANCELED:
        return job
    if job.status in (S.SUCCEEDED, S.FAILED):
        raise Conflict(f"the job already {job.status}; only queued or running jobs can be canceled",
                       code="already_finished")
    was = job.status
    updated = cover_job_transition(job_id=job.id, to=S.CANCELED, error_message="")
    if updated is None:
        current = CoverJob.objects.select_related("owner").get(pk=job.id)
        if current.status == S.CANCELED:
            return current
        raise Conflict(f"the job already {current.status}", code="already_finished")
    try:
        conn = redis_connection()
        conn.set(cancel_flag_key(job.id), "1", ex=24 * 3600)
        if was == S.QUEUED and job.task_id:
            from rq.job import Job

            rq_job = Job.fetch(job.task_id, connection=conn)
            if rq_job.get_status(refresh=False) == "queued":
                rq_job.cancel()
    except Exception as exc:  # the DB row is the truth; Redis is only a hint here
        log.info("cancel of %s: redis bookkeeping skipped (%s)", job.id, exc)
    return updated


def _delete_files(job: CoverJob) -> None:
    storage = None
    for name in FILE_FIELDS:
        f = getattr(job, name)
        if f and f.name:
            storage = f.storage
            try:
                f.storage.delete(f.name)
            except Exception as exc:
                log.warning("could not delete %s of job %s: %s", name, job.id, exc)
    if storage is not None:
        try:  # FileSystemStorage: remove the job's now empty folder
            os.rmdir(storage.path(f"covers/{job.id}"))
        except Exception:
            pass


def cover_job_delete(*, job: CoverJob) -> None:
    """Cancel if needed, remove the files, remove the row."""
    if job.status in CoverJob.ACTIVE:
        try:
            cover_job_cancel(job=job)
        except Conflict:
            pass
        job.refresh_from_db()
    _delete_files(job)
    CoverJob.objects.filter(pk=job.id).delete()


def cover_job_store_file(*, job: CoverJob, field: str, path, name: str) -> str:
    """Save a local file into storage as ``covers/<id>/<name>``; returns the storage name."""
    from django.core.files import File

    f = getattr(job, field)
    with open(path, "rb") as fh:
        return f.storage.save(f.field.generate_filename(job, name), File(fh, name=name))


# --------------------------------------------------------------------------------------------
# reconciler: dead workers and rows that never reached Redis
# --------------------------------------------------------------------------------------------
def cover_jobs_reconcile() -> dict:
    """Fail running jobs whose worker stopped beating; re-enqueue (or fail) queued rows whose RQ
    job is missing. Safe to run from several workers at once (every change is conditional)."""
    from rq.job import Job
    from rq.exceptions import NoSuchJobError

    now = timezone.now()
    out = {"failed_dead": 0, "requeued": 0, "failed_unqueued": 0}
    dead_before = now - timedelta(seconds=settings.COVER_WORKER_DEAD_AFTER_SECONDS)
    stale = CoverJob.objects.filter(status=S.RUNNING).filter(
        Q(heartbeat_at__lt=dead_before) | Q(heartbeat_at__isnull=True, started_at__lt=dead_before))
    for job in stale.only("id", "attempt", "stage", "worker_name"):
        stage = job.stage or "preprocess"
        if cover_job_fail(job_id=job.id, attempt=job.attempt, code="worker_lost",
                          message=f"{stage}: the worker running this job stopped (killed or out of memory)"
                                  f"; please submit it again"):
            out["failed_dead"] += 1
    grace_before = now - timedelta(seconds=settings.COVER_QUEUED_GRACE_SECONDS)
    conn = redis_connection()
    for job in CoverJob.objects.filter(status=S.QUEUED, created_at__lt=grace_before).only(
            "id", "attempt", "task_id", "owner", "user"):
        try:
            status = Job.fetch(job.task_id, connection=conn).get_status(refresh=False)
        except NoSuchJobError:
            status = None
        if status in ("queued", "started", "scheduled", "deferred"):
            continue
        if status == "failed":
            if cover_job_fail(job_id=job.id, attempt=job.attempt, code="queue_error",
                              message="preprocess: the queue reported the job as failed before it started"):
                out["failed_unqueued"] += 1
            continue
        if job.attempt >= MAX_ENQUEUE_ATTEMPTS:
            if cover_job_fail(job_id=job.id, attempt=job.attempt, code="not_enqueued",
                              message="preprocess: the job never reached the queue; please submit it again"):
                out["failed_unqueued"] += 1
            continue
        attempt = job.attempt + 1
        task_id = _new_task_id(job.id, attempt)
        if CoverJob.objects.filter(pk=job.id, status=S.QUEUED, attempt=job.attempt).update(
                attempt=attempt, task_id=task_id) == 1:
            job.attempt, job.task_id = attempt, task_id
            try:
                _enqueue(job)
                out["requeued"] += 1
            except Exception as exc:
                log.warning("re-enqueue of %s failed: %s", job.id, exc)
    return out


# --------------------------------------------------------------------------------------------
# staff operations (the admin's job actions)
# --------------------------------------------------------------------------------------------
def cover_job_retry(*, job: CoverJob) -> CoverJob:
    """A NEW job from ``job``'s stored inputs and parameters (same key and user), enqueued after
    commit. The old row is left as it is. Conflict when its inputs are gone (expired, purged)."""
    from django.core.files import File

    inputs = [f for f in ("song", "vocals", "instrumental", "reference_voice")
              if getattr(job, f) and (f == "song" or f == "reference_voice" or (job.parameters or {}).get("stems"))]
    if job.expired_at is not None or not job.reference_voice or not (job.song or "vocals" in inputs):
        raise Conflict("the job's input files were deleted (expired or purged); it cannot be retried",
                       code="inputs_gone")
    _ping_queue()
    new_id = uuid.uuid4()
    new = CoverJob(id=new_id, owner=job.owner, user=job.user, status=S.QUEUED, task_id=_new_task_id(new_id, 1),
                   attempt=1, parameters={**(job.parameters or {}), "retry_of": str(job.id)},
                   input_info=job.input_info)
    try:
        for field in inputs:
            src = getattr(job, field)
            name = Path(src.name).name
            with src.open("rb") as fh:
                getattr(new, field).save(name, File(fh, name=name), save=False)
    except FileNotFoundError:
        _delete_files(new)
        raise Conflict("the job's input files are missing from storage; it cannot be retried",
                       code="inputs_gone") from None
    try:
        with transaction.atomic():
            new.save(force_insert=True)
            transaction.on_commit(partial(_enqueue_after_commit, new))
    except QueueUnavailable:
        raise
    except BaseException:
        _delete_files(new)
        raise
    return new


def cover_job_purge_files(*, job: CoverJob) -> int:
    """Delete a finished job's inputs, stems and result now (the row stays, marked expired, and
    its file endpoints answer 410). Conflict for queued/running jobs. Returns files deleted."""
    if job.status in CoverJob.ACTIVE:
        raise Conflict(f"the job is {job.status}; cancel it before purging its files", code="job_active")
    now = timezone.now()
    names = [getattr(job, f).name for f in FILE_FIELDS if getattr(job, f)]
    updated = CoverJob.objects.filter(pk=job.pk, status__in=CoverJob.TERMINAL).update(
        expired_at=now, updated_at=now, **{f: "" for f in FILE_FIELDS})
    if updated != 1:
        raise Conflict("the job changed meanwhile; try again", code="conflict")
    _delete_files(job)
    return len(names)
