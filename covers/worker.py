"""The RQ worker class for `manage.py rqworker cover` (set as RQ["WORKER_CLASS"] in settings).

- No fork per job (rq's SimpleWorker): engines loaded by one job stay loaded for the next
  (inference.registry caches them per process), and CUDA is never used after a fork.
- A background thread, alive for the whole worker: while a job runs it refreshes RQ's
  worker/job heartbeats (SimpleWorker sends none during a job) and the row's heartbeat_at;
  every COVER_RECONCILE_INTERVAL_SECONDS it runs the reconciler (fails rows whose worker died,
  re-enqueues rows that never reached Redis) and RQ's started-registry cleanup (which calls the
  jobs' failure callback for abandoned jobs).
- RQ's scheduler is on (unless COVER_WORKER_WITH_SCHEDULER=false; not in --burst mode): it
  runs the periodic cleanup chain of covers.cleanup, which this worker starts (and restarts
  on every reconcile tick if Redis lost it). No system cron is needed.
- Per-stage time limits (COVER_STAGE_TIMEOUTS): the same thread fails a job whose stage runs
  over its limit and exits the process, so even a hang in native code ends (see _watch_stage).
- Job inputs are decoded in a child process with limits (isolate_decoding): a decoder crash fails
  the job (corrupt_audio), not the worker.
- A shorter started-registry TTL than SimpleWorker's (job_timeout + 60 s), so RQ itself notices
  a dead worker quickly too.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection
from rq.registry import StartedJobRegistry
from rq.worker import SimpleWorker

log = logging.getLogger(__name__)
STAGE_TIMEOUT_EXIT_CODE = 70  # the worker exits with this after its stage watchdog fired
# What decodes a job's inputs in the child process (tests swap in a decoder that crashes; it must
# be importable by name). None: inference.audio.decode_to_file.
DECODE_TARGET = None


def isolate_decoding() -> None:
    """With COVER_DECODE_ISOLATED (default), this process decodes job inputs in a child process
    with COVER_DECODE_TIMEOUT_SECONDS / COVER_DECODE_MEMORY_MB (the way the web process probes
    uploads): a decoder that crashes, hangs or allocates without bound on a hostile file fails
    that job with corrupt_audio, and the worker goes on with the next one."""
    from inference import audio

    if not settings.COVER_DECODE_ISOLATED:
        audio.isolate_decoding(None)
        return
    audio.isolate_decoding(audio.Isolation(timeout=float(settings.COVER_DECODE_TIMEOUT_SECONDS),
                                           memory_mb=int(settings.COVER_DECODE_MEMORY_MB), target=DECODE_TARGET))


class CoverWorker(SimpleWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_webhook_queue()
        self._current_job = None
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._last_reconcile = 0.0
        self._stage_seen: tuple[str, str, float] | None = None  # (job id, stage, since) for the watchdog
        isolate_decoding()

    def _add_webhook_queue(self) -> None:
        """Webhook retries (covers.webhooks, short jobs) run here too, after the cover queues."""
        from rq import Queue

        from .webhooks import QUEUE_NAME
        if any(q.name == QUEUE_NAME for q in self.queues) or not self.queues:
            return
        q = Queue(QUEUE_NAME, connection=self.connection, serializer=self.serializer, job_class=self.job_class)
        self.queues.append(q)
        self._ordered_queues.append(q)

    # -- lifecycle -------------------------------------------------------------------------
    def work(self, *args, **kwargs):
        self._periodic = not kwargs.get("burst")
        if self._periodic:
            # RQ's scheduler (a forked process holding a per-queue lock, so one per queue across
            # workers) runs the periodic cleanup chain (covers.cleanup): no system cron needed.
            if settings.COVER_WORKER_WITH_SCHEDULER:
                kwargs["with_scheduler"] = True
            self._ensure_cleanup_scheduled()
        self._start_background()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._beat_stop.set()
            if self._beat_thread is not None:
                self._beat_thread.join(timeout=5)

    def _start_background(self) -> None:
        if self._beat_thread is None or not self._beat_thread.is_alive():
            self._beat_stop.clear()
            self._beat_thread = threading.Thread(target=self._background, name="cover-heartbeat", daemon=True)
            self._beat_thread.start()

    def get_heartbeat_ttl(self, job) -> int:
        # Our thread refreshes every COVER_WORKER_HEARTBEAT_SECONDS; expire well after a few misses.
        return int(max(30, settings.COVER_WORKER_DEAD_AFTER_SECONDS + 30))

    def execute_job(self, job, queue):
        self._current_job = job
        try:
            super().execute_job(job, queue)
        except BaseException as exc:  # cold shutdown (Ctrl-C twice, SystemExit) mid-job
            self._fail_current(job, f"the worker was stopped ({exc.__class__.__name__})")
            raise
        finally:
            self._current_job = None

    def _fail_current(self, job, reason: str) -> None:
        """A cold shutdown interrupted the job: re-queued once, else failed
        (:func:`covers.jobs.interrupted_by_shutdown`)."""
        try:
            from .jobs import interrupted_by_shutdown
            from .models import CoverJob
            job_id, attempt = (list(job.args) + [1])[:2]
            stage = CoverJob.objects.filter(pk=job_id).values_list("stage", flat=True).first() or "preprocess"
            interrupted_by_shutdown(job_id=job_id, attempt=int(attempt), stage=stage, reason=reason)
        except Exception:
            log.exception("could not mark job %s failed", getattr(job, "id", "?"))

    # -- background thread -----------------------------------------------------------------
    def _background(self) -> None:
        interval = max(0.2, float(settings.COVER_WORKER_HEARTBEAT_SECONDS))
        try:
            while not self._beat_stop.wait(interval):
                self._beat_once()
                if time.monotonic() - self._last_reconcile >= settings.COVER_RECONCILE_INTERVAL_SECONDS:
                    self._last_reconcile = time.monotonic()
                    self.reconcile()
                    if getattr(self, "_periodic", False):
                        self._ensure_cleanup_scheduled()
                close_old_connections()
        finally:
            connection.close()

    def _beat_once(self) -> None:
        job = self._current_job
        if job is None:
            return
        try:
            self.maintain_heartbeats(job)
        except Exception as exc:
            log.debug("rq heartbeat skipped: %s", exc)
        try:
            from . import services
            job_id, attempt = (list(job.args) + [1])[:2]
            services.cover_job_heartbeat(job_id=job_id, attempt=int(attempt))
        except Exception as exc:
            log.warning("row heartbeat failed: %s", exc)
        self._watch_stage(job)

    # -- per-stage time limits -------------------------------------------------------------
    def _watch_stage(self, job) -> None:
        """The watchdog for COVER_STAGE_TIMEOUTS, run by the heartbeat thread, so it fires even
        while the job's thread hangs in native code: a stage over its limit fails the row
        ("<stage>: timeout in <stage> ...", through the transition service, for this attempt only)
        and the process exits at once (os._exit: a hung thread cannot be stopped otherwise); the
        supervisor starts a fresh worker, and RQ's started-registry cleanup retires the RQ job."""
        limits = getattr(settings, "COVER_STAGE_TIMEOUTS", None) or {}
        if not limits:
            return
        try:
            from .models import CoverJob
            job_id, attempt = (list(job.args) + [1])[:2]
            row = CoverJob.objects.filter(pk=job_id, attempt=int(attempt)).values_list("status", "stage").first()
        except Exception as exc:
            log.debug("stage watchdog skipped: %s", exc)
            return
        if row is None or row[0] != CoverJob.Status.RUNNING:
            return
        stage, now = row[1] or "preprocess", time.monotonic()
        seen = self._stage_seen
        if seen is None or seen[:2] != (str(job_id), stage):
            self._stage_seen = (str(job_id), stage, now)
            return
        limit = float(limits.get(stage) or 0)
        if limit <= 0 or now - seen[2] <= limit:
            return
        from . import services
        log.error("job %s: %s ran over its limit of %g s; failing it and exiting the worker", job_id, stage, limit)
        try:
            services.cover_job_fail(job_id=job_id, attempt=int(attempt), code="timeout", stage=stage,
                                    message=f"{stage}: timeout in {stage} (over the limit of {limit:g} s)")
        finally:
            logging.shutdown()
            os._exit(STAGE_TIMEOUT_EXIT_CODE)

    def _ensure_cleanup_scheduled(self) -> None:
        try:
            from .cleanup import ensure_cleanup_scheduled
            if ensure_cleanup_scheduled():
                log.info("periodic cleanup scheduled (every %s s)", settings.COVER_CLEANUP_INTERVAL_SECONDS)
        except Exception as exc:
            log.warning("could not schedule the periodic cleanup: %s", exc)

    def reconcile(self) -> dict:
        out: dict = {}
        try:
            for queue in self.queues:
                StartedJobRegistry(queue=queue).cleanup()
        except Exception as exc:
            log.warning("started-registry cleanup failed: %s", exc)
        try:
            from . import services
            out = services.cover_jobs_reconcile()
            if any(out.values()):
                log.info("reconciler: %s", out)
        except Exception:
            log.exception("reconciler failed")
        return out
