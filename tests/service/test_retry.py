"""A transient error (GPU out of memory, ...) re-queues a job once as a new attempt; a second
transient error fails it. Real worker class, in-process, real Redis and database."""
from __future__ import annotations

import signal

import pytest
from django.test import Client
from rq import Queue

from covers.models import CoverJob
from covers.queue import redis_connection
from inference import registry
from inference.errors import PipelineError
from tests.service.conftest import upload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLS = {"flaky": 0, "always": 0}


@registry.register("separator", "test-oom-once")
class OomOnce:
    """Raises the GPU out-of-memory error on its first call in the process, then halves the song."""
    name, version = "test-oom-once", "1"

    def separate(self, song, sr, ctx):
        CALLS["flaky"] += 1
        if CALLS["flaky"] == 1:
            raise PipelineError("separate", "the GPU ran out of memory", code="out_of_memory", transient=True)
        vocals = song * 0.5
        return vocals, song - vocals


@registry.register("separator", "test-oom-always")
class OomAlways:
    name, version = "test-oom-always", "1"

    def separate(self, song, sr, ctx):
        CALLS["always"] += 1
        raise PipelineError("separate", "the GPU ran out of memory", code="out_of_memory", transient=True)


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _run(settings, api_key, song_bytes, ref_bytes, separator):
    from covers.worker import CoverWorker

    settings.COVER_SEPARATOR = separator
    settings.COVER_QUALITY_REPORT = False
    _, raw = api_key
    resp = Client().post("/api/v1/cover/jobs", {"song": upload("s.wav", song_bytes),
                                                "reference_voice": upload("r.wav", ref_bytes)},
                         HTTP_X_API_KEY=raw)
    assert resp.status_code == 201, resp.content
    queue = Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())
    CoverWorker([queue], connection=redis_connection()).work(burst=True)
    return CoverJob.objects.get(pk=resp.json()["job_id"])


def test_a_transient_error_is_retried_once_and_the_job_succeeds(api_key, song_bytes, ref_bytes, settings,
                                                                restore_signals):
    CALLS["flaky"] = 0
    job = _run(settings, api_key, song_bytes, ref_bytes, "test-oom-once")
    assert CALLS["flaky"] == 2
    assert job.status == "succeeded", job.error_message
    assert (job.attempt, job.retries) == (2, 1)
    assert job.result.name


def test_a_second_transient_error_fails_the_job_naming_the_stage(api_key, song_bytes, ref_bytes, settings,
                                                                 restore_signals):
    CALLS["always"] = 0
    job = _run(settings, api_key, song_bytes, ref_bytes, "test-oom-always")
    assert CALLS["always"] == 2  # the first attempt and exactly one retry
    assert job.status == "failed"
    assert (job.attempt, job.retries) == (2, 1)
    assert job.error_code == "out_of_memory"
    assert job.error_message.startswith("separate: ") and "out of memory" in job.error_message
    assert not job.result


def test_rq_failure_callback_requeues_a_job_a_cold_shutdown_interrupted_once(api_key, song_bytes, ref_bytes,
                                                                            settings):
    """on_rq_failure (the worker died before it could record anything) treats SystemExit as a
    cold shutdown: the job goes back to the queue once, the second time it fails."""
    from types import SimpleNamespace

    from covers import services
    from covers.jobs import on_rq_failure

    _, raw = api_key
    resp = Client().post("/api/v1/cover/jobs", {"song": upload("s.wav", song_bytes),
                                                "reference_voice": upload("r.wav", ref_bytes)},
                         HTTP_X_API_KEY=raw)
    assert resp.status_code == 201, resp.content
    job_id = resp.json()["job_id"]
    assert services.cover_job_start(job_id=job_id, attempt=1, worker_name="w1") is not None
    on_rq_failure(SimpleNamespace(id="rq1", args=(job_id, 1)), None, SystemExit, SystemExit(), None)
    job = CoverJob.objects.get(pk=job_id)
    assert (job.status, job.attempt, job.retries) == ("queued", 2, 1), job.error_message
    assert "worker shutdown" in job.error_message

    assert services.cover_job_start(job_id=job_id, attempt=2, worker_name="w1") is not None
    on_rq_failure(SimpleNamespace(id="rq2", args=(job_id, 2)), None, SystemExit, SystemExit(), None)
    job = CoverJob.objects.get(pk=job_id)
    assert (job.status, job.attempt, job.error_code) == ("failed", 2, "worker_stopped")
    assert job.error_message == "preprocess: worker shutdown: the job was interrupted; please submit it again"
