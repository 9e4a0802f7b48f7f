"""The RQ job: the one place Django and the inference package meet.

``run_cover_job(job_id, attempt)`` loads the row, moves it queued -> running, runs
``inference.Pipeline`` with a config built from settings and the job's parameters, reports
stage/progress through services (throttled), stores the artifacts through Django storage and
ends the row succeeded / failed (a message naming the stage and cause, never a traceback) /
canceled. It catches everything: RQ sees a failure only for a dead worker (abandoned job).
"""
from __future__ import annotations

import inspect
import logging
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from . import services
from .models import CoverJob
from .queue import cancel_flag_key, redis_connection
from .stem_cache import stem_cache

log = logging.getLogger(__name__)
S = CoverJob.Status

# engine name -> {constructor argument: settings name}; passed only when set and accepted.
_ENGINE_SETTINGS = {
    ("separator", "command"): {"template": "COVER_SEPARATE_CMD_TEMPLATE", "python_exec": "GPT_SOVITS_PYTHON",
                               "project_root": "GPT_SOVITS_PROJECT_ROOT", "uvr_model": "COVER_UVR_MODEL",
                               "timeout": "COVER_JOB_TIMEOUT"},
    ("converter", "gpt-sovits-command"): {"template": "COVER_INFER_CMD_TEMPLATE",
                                          "python_exec": "GPT_SOVITS_PYTHON",
                                          "project_root": "GPT_SOVITS_PROJECT_ROOT",
                                          "timeout": "COVER_JOB_TIMEOUT"},
    ("converter", "gpt-sovits-api"): {"base_url": "GPT_SOVITS_API_URL", "project_root": "GPT_SOVITS_PROJECT_ROOT"},
}


def _engine_options(kind: str, name: str) -> dict:
    mapping = _ENGINE_SETTINGS.get((kind, name))
    if not mapping:
        return {}
    try:
        from inference import registry
        registry._ensure_builtin()
        factory = registry._FACTORIES[(kind, name)]
        params = inspect.signature(factory).parameters
        accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    except Exception:
        return {}
    out = {}
    for arg, setting in mapping.items():
        value = getattr(settings, setting, "")
        if value and (accepts_any or arg in params) and arg not in out:
            out[arg] = value
    return out


def build_pipeline_config(job: CoverJob):
    from inference import Limits, MixOptions, PipelineConfig

    from inference.config import OutputOptions
    from .voice_models import job_model_setup, voice_model_engine_options

    p = job.parameters or {}
    separator = p.get("separator") or settings.COVER_SEPARATOR
    converter = p.get("converter") or settings.COVER_CONVERTER
    max_song = settings.COVER_MAX_SONG_SECONDS
    if job.owner_id and job.owner and job.owner.max_song_seconds:
        max_song = min(max_song, job.owner.max_song_seconds)
    # Registered RVC / UVR-family models (covers.voice_models): their files, the engines' worker-wide
    # resources, the separation chain; resolved here, in the worker, at run time.
    setup = job_model_setup(p)
    separator = setup.get("separator") or separator
    engine_options = dict(setup["engine_options"])
    for kind, name in (("separator", separator), ("converter", converter)):
        opts = _engine_options(kind, name)
        if opts:
            engine_options[name] = {**opts, **engine_options.get(name, {})}
    # A registered GPT-SoVITS model's files for the converter that uses them.
    model_opts = voice_model_engine_options(model_id=p.get("model_id"), converter=converter)
    if model_opts:
        engine_options[converter] = {**engine_options.get(converter, {}), **model_opts}
    return PipelineConfig(
        separator=separator, converter=converter,
        model_files=setup["model_files"], converter_params=setup["converter_params"],
        separation_chain=setup.get("separation_chain") or {},
        pitch_shift=float(p.get("pitch_shift") or 0.0), auto_pitch=bool(p.get("auto_pitch")),
        model_id=p.get("model_id") or None,
        reference_text=p.get("reference_text") or None, target_text=p.get("target_text") or None,
        limits=Limits(max_song_seconds=max_song, min_reference_seconds=settings.COVER_MIN_REFERENCE_SECONDS,
                      max_reference_seconds=settings.COVER_MAX_REFERENCE_SECONDS,
                      min_sample_rate=settings.COVER_MIN_SAMPLE_RATE,
                      max_sample_rate=settings.COVER_MAX_SAMPLE_RATE, max_channels=settings.COVER_MAX_CHANNELS),
        engine_options=engine_options, device=settings.COVER_DEVICE or None,
        quality_report=bool(getattr(settings, "COVER_QUALITY_REPORT", True)),
        mix=MixOptions(reverb=float(p.get("reverb") or 0.0), vocal_gain_db=float(p.get("vocal_gain_db") or 0.0),
                       instrumental_gain_db=float(p.get("instrumental_gain_db") or 0.0)),
        output=OutputOptions(sample_rate=int(p["output_sample_rate"]) if p.get("output_sample_rate") else None,
                             extra_formats=(fmt,) if (fmt := p.get("output_format") or "wav") != "wav" else ()),
    )


# How long a running job waits for the database to come back (a restart, a failover) before it
# gives up; meanwhile every write and read of the job is retried with a short backoff.
DB_RETRY_SECONDS = 30.0
DB_ERRORS = (OperationalError, InterfaceError)


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for longer than DB_RETRY_SECONDS."""


def _drop_connection() -> None:
    """Forget this thread's (broken) connection; the next query takes a fresh one (from the pool,
    which checks it first: CONN_HEALTH_CHECKS)."""
    try:
        connection.close()
    except Exception:  # closing a dead connection may fail too; Django forgets it all the same
        pass


def _db_retry(fn, what: str, *, verify=None):
    """``fn()``, retried while the database is unreachable (OperationalError / InterfaceError:
    restarted, failing over, the pool timing out), with backoff 0.2 s -> 2 s, for up to
    DB_RETRY_SECONDS (``COVER_DB_RETRY_SECONDS`` overrides it); then DatabaseUnavailable.

    Every write retried here is one conditional UPDATE, so a repeat is harmless. When a retried
    write answers "nothing changed", ``verify()`` (if given) says whether the attempt that lost its
    connection had in fact committed: its result is returned instead."""
    limit = float(getattr(settings, "COVER_DB_RETRY_SECONDS", DB_RETRY_SECONDS))
    deadline = time.monotonic() + limit
    delay, tries = 0.2, 0
    while True:
        try:
            out = fn()
        except DB_ERRORS as exc:
            if connection.in_atomic_block:
                raise  # a transaction's work is lost with its connection: the caller must redo it
            tries += 1
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"the database was unreachable for {limit:g} s while {what} "
                                          f"({exc.__class__.__name__}: {str(exc).strip()[:150]})") from exc
            log.warning("database unreachable while %s (%s: %s); retry %d in %.1f s", what,
                        exc.__class__.__name__, str(exc).strip()[:200], tries, delay)
            _drop_connection()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if tries and not out and verify is not None:
            return _db_retry(verify, what)
        if tries:
            log.info("database reachable again while %s (after %d retries)", what, tries)
        return out


def _db_retry_in(stage: str, fn, what: str, *, verify=None):
    """:func:`_db_retry` inside a running stage: a database that stays away fails the job in
    ``stage`` (``database_unavailable``) through the pipeline's own error path."""
    try:
        return _db_retry(fn, what, verify=verify)
    except DatabaseUnavailable as exc:
        from inference.errors import PipelineError
        raise PipelineError(stage, str(exc), code="database_unavailable") from None


class _Reporter:
    """Pipeline events -> throttled DB writes (+ notifications); cooperative cancel checks."""

    def __init__(self, job: CoverJob):
        self.job = job
        self.timings: dict[str, float] = {}
        self.stopped = False          # the row is no longer ours to run (canceled, failed, deleted)
        self._last_check = 0.0
        self.stage = CoverJob.Stage.PREPROCESS

    def on_event(self, ev) -> None:
        if self.stopped:
            return
        self.stage = ev.stage
        if ev.type == "stage_finished" and ev.seconds is not None:
            self.timings[ev.stage] = round(float(ev.seconds), 3)
            kwargs = {"timings": dict(self.timings)}
        else:
            kwargs = {"force": ev.type == "stage_started"}
        ok = _db_retry_in(ev.stage, lambda: services.cover_job_progress(
            job=self.job, stage=ev.stage, progress=ev.overall * 100, **kwargs), f"recording progress in {ev.stage}")
        if not ok:
            self.stopped = True

    def should_cancel(self) -> bool:
        if self.stopped:
            return True
        now = time.monotonic()
        if now - self._last_check < settings.COVER_CANCEL_POLL_SECONDS:
            return False
        self._last_check = now
        try:
            if redis_connection().exists(cancel_flag_key(self.job.id)):
                self.stopped = True
                return True
        except Exception:
            pass  # Redis hiccup: the DB below is the truth anyway
        status = _db_retry_in(self.stage, lambda: CoverJob.objects.filter(
            pk=self.job.id, attempt=self.job.attempt).values_list("status", flat=True).first(),
            f"checking for a cancel in {self.stage}")
        if status != S.RUNNING:
            self.stopped = True
        return self.stopped


def _local_input(field_file, dest: Path) -> Path:
    """A local path for a stored input: FileSystemStorage's own file, else (S3 and other remote
    storages) a download into the job's scratch folder. Artifacts go back through storage
    (services.cover_job_store_file), so no worker assumes a folder shared with the web."""
    try:
        return Path(field_file.path)  # local storage: no copy
    except (NotImplementedError, AttributeError):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with field_file.open("rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        return dest


def _current_worker_name() -> str:
    try:
        from rq import get_current_job
        from rq.worker import Worker  # noqa: F401
        job = get_current_job()
        return (job.worker_name or "") if job is not None else ""
    except Exception:
        return ""


def run_cover_job(job_id: str, attempt: int = 1) -> str:
    """RQ entry point. Returns the final status (RQ stores it as the job's result)."""
    close_old_connections()
    try:
        return _run(job_id, int(attempt))
    finally:
        close_old_connections()


def _run(job_id: str, attempt: int) -> str:
    from inference.errors import Canceled, InputError, PipelineError
    from rq.timeouts import JobTimeoutException

    worker_name = _current_worker_name()

    def started_meanwhile():  # the start committed, but its connection died before the answer
        return CoverJob.objects.select_related("owner").filter(
            pk=job_id, attempt=attempt, status=S.RUNNING, worker_name=worker_name[:128]).first()

    job = _db_retry(lambda: services.cover_job_start(job_id=job_id, attempt=attempt, worker_name=worker_name),
                    "starting the job", verify=started_meanwhile)
    if job is None:
        current = _db_retry(lambda: CoverJob.objects.filter(pk=job_id).values_list("status", "attempt").first(),
                            "reading the job")
        log.info("job %s attempt %s not started (row: %s)", job_id, attempt, current)
        return current[0] if current else "deleted"
    workdir = Path(settings.COVER_WORK_ROOT) / f"{job.id}-{attempt}"
    reporter = _Reporter(job)
    stored: list[tuple[str, str]] = []  # (field, storage name) saved for this attempt
    try:
        from inference import Pipeline

        params = job.parameters or {}
        own_stems = bool(params.get("stems"))  # the client's vocals (+ instrumental): no separation

        def local(field):
            f = getattr(job, field)
            return _local_input(f, workdir / "input" / Path(f.name).name) if f else None

        ref = local("reference_voice")
        config = build_pipeline_config(job)
        pipeline = Pipeline(config, on_event=reporter.on_event, should_cancel=reporter.should_cancel,
                            stem_cache=stem_cache())
        if own_stems:
            result = pipeline.run(None, ref, workdir / "run", vocals_path=local("vocals"),
                                  instrumental_path=local("instrumental"))
        else:
            result = pipeline.run(local("song"), ref, workdir / "run")
        reporter._last_check = 0.0
        if reporter.should_cancel():
            raise Canceled(reporter.stage)
        fields = {}
        fmt = params.get("output_format") or "wav"
        for field, artifact in (("result", "cover" if fmt == "wav" else f"cover_{fmt}"), ("vocals", "vocals"),
                                ("instrumental", "instrumental"), ("converted_vocals", "converted_vocals")):
            if own_stems and getattr(job, field):
                continue  # the client's own stem stays as it was uploaded
            path = result.artifacts.get(artifact)
            if path is None or not Path(path).is_file():
                if field == "result":
                    raise PipelineError("finalize", "the pipeline produced no cover file", code="no_output")
                continue
            stem = "cover" if field == "result" else field
            name = services.cover_job_store_file(job=job, field=field, path=path, name=f"{stem}{Path(path).suffix}")
            stored.append((field, name))
            fields[field] = name
        report = dict(result.report or {})
        if result.warnings:
            report["warnings"] = list(result.warnings)
        timings = dict(report.get("timings") or reporter.timings)
        quality = dict(getattr(result, "quality", None) or report.get("quality") or {})
        fields.update(quality=quality, quality_warning=bool(quality.get("quality_warning")))

        def succeeded_meanwhile():  # the UPDATE committed, but its connection died before the answer
            return CoverJob.objects.filter(pk=job.id, attempt=attempt, status=S.SUCCEEDED,
                                           result=fields["result"]).first()

        done = _db_retry_in(CoverJob.Stage.FINALIZE, lambda: services.cover_job_transition(
            job_id=job.id, to=S.SUCCEEDED, attempt=attempt, report=report, timings=timings,
            stage=CoverJob.Stage.FINALIZE, **fields), "recording the result", verify=succeeded_meanwhile)
        if done is None:  # canceled/failed/deleted meanwhile: no result for it
            _discard(job, stored)
            return _status_of(job_id)
        return S.SUCCEEDED
    except Canceled:
        _discard(job, stored)
        # Normally the API already set canceled; this covers a cancel seen only through Redis.
        _db_retry(lambda: services.cover_job_transition(job_id=job.id, to=S.CANCELED, attempt=attempt),
                  "recording the cancel")
        return _status_of(job_id)
    except InputError as exc:
        _discard(job, stored)
        _fail(job_id=job.id, attempt=attempt, code=exc.code, stage=exc.stage or reporter.stage,
              message=_describe(exc.stage or reporter.stage, exc.message))
        return _status_of(job_id)
    except PipelineError as exc:
        _discard(job, stored)
        stage, code, message = exc.stage or reporter.stage, exc.code, exc.message
        if exc.transient and _db_retry(lambda: services.cover_job_retry_transient(
                job_id=job.id, attempt=attempt, code=code, message=message, stage=stage),
                "re-queueing the job"):
            log.warning("job %s attempt %s: transient error in %s (%s); re-queued once",
                        job_id, attempt, stage, exc.code)
            return _status_of(job_id)
        _fail(job_id=job.id, attempt=attempt, code=exc.code, stage=exc.stage or reporter.stage,
              message=_describe(exc.stage or reporter.stage, exc.message))
        return _status_of(job_id)
    except JobTimeoutException:
        _discard(job, stored)
        _fail(job_id=job.id, attempt=attempt, code="timeout", stage=reporter.stage,
              message=_describe(reporter.stage, f"the job took longer than the limit of "
                                                f"{settings.COVER_JOB_TIMEOUT} s"))
        return _status_of(job_id)
    except Exception as exc:  # a bug: log the traceback, show the user a one-line cause
        log.exception("cover job %s failed", job_id)
        _discard(job, stored)
        _fail(job_id=job.id, attempt=attempt, code="internal_error", stage=reporter.stage,
              message=_describe(reporter.stage, f"internal error ({exc.__class__.__name__}: "
                                                f"{str(exc)[:200]})"))
        return _status_of(job_id)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _describe(stage: str | None, message: str) -> str:
    message = (message or "").strip() or "unknown error"
    if stage and not message.startswith(f"{stage}:"):
        return f"{stage}: {message}"
    return message


def _fail(**kwargs):
    """services.cover_job_fail, retried while the database is unreachable."""
    return _db_retry(lambda: services.cover_job_fail(**kwargs), "recording the failure")


def _status_of(job_id) -> str:
    return _db_retry(lambda: CoverJob.objects.filter(pk=job_id).values_list("status", flat=True).first(),
                     "reading the job") or "deleted"


def _discard(job: CoverJob, stored: list[tuple[str, str]]) -> None:
    for field, name in stored:
        try:
            getattr(job, field).storage.delete(name)
        except Exception as exc:
            log.warning("could not delete %s of job %s: %s", name, job.id, exc)


def interrupted_by_shutdown(*, job_id, attempt: int, stage: str, reason: str = "") -> None:
    """A cold shutdown (a second SIGTERM / Ctrl-C) interrupted the job: nothing about the job
    caused it, so it goes back to the queue once as a new attempt
    (services.cover_job_retry_transient); interrupted again, it fails ``"<stage>: worker shutdown"``.
    Called by the worker itself and, when the worker could not, by :func:`on_rq_failure`."""
    what = f"the job was interrupted ({reason})" if reason else "the job was interrupted"
    if services.cover_job_retry_transient(job_id=job_id, attempt=attempt, code="worker_stopped", stage=stage,
                                          message=f"worker shutdown: {what}"):
        log.warning("job %s attempt %s interrupted by a worker shutdown in %s; re-queued once",
                    job_id, attempt, stage)
        return
    services.cover_job_fail(job_id=job_id, attempt=attempt, code="worker_stopped", stage=stage,
                            message=f"{stage}: worker shutdown: {what}; please submit it again")


def on_rq_failure(rq_job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: the job function itself catches everything, so this runs for an
    abandoned job (its worker died) or a crash outside the pipeline. Fails the row."""
    try:
        job_id, attempt = (list(rq_job.args) + [1])[:2]
        stage = CoverJob.objects.filter(pk=job_id).values_list("stage", flat=True).first() or "preprocess"
        if exc_type is not None and exc_type.__name__ == "AbandonedJobError":
            message = f"{stage}: the worker running this job stopped (killed or out of memory); please submit it again"
            code = "worker_lost"
        elif exc_type is not None and issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
            interrupted_by_shutdown(job_id=job_id, attempt=int(attempt), stage=stage)  # a cold shutdown
            return
        else:
            message = f"{stage}: the worker failed ({getattr(exc_type, '__name__', 'error')}: {str(exc_value)[:200]})"
            code = "worker_error"
        services.cover_job_fail(job_id=job_id, attempt=int(attempt), code=code, message=message)
    except Exception:
        log.exception("on_rq_failure for %s", getattr(rq_job, "id", "?"))
