"""The worker class runs jobs in its own process (no fork): engines load once for many jobs.
Runs the real pipeline (default engines) on short generated audio, in-process."""
from __future__ import annotations

import signal

import pytest
import soundfile as sf
from django.test import Client
from rq import Queue

from covers.models import CoverJob
from covers.queue import redis_connection
from tests.service.conftest import upload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_settings_make_rqworker_use_the_non_forking_worker():
    from django_rq.workers import get_worker
    from rq.worker import SimpleWorker

    from covers.worker import CoverWorker

    worker = get_worker("cover")
    assert type(worker) is CoverWorker and isinstance(worker, SimpleWorker)


def test_two_jobs_in_one_worker_load_the_engines_once(api_key, song_bytes, ref_bytes, settings, restore_signals):
    from inference import registry

    from covers.worker import CoverWorker

    _, raw = api_key
    client = Client()
    ids = []
    for pitch in ("0", "3"):
        resp = client.post("/api/v1/cover/jobs", {"song": upload("s.wav", song_bytes),
                                                  "reference_voice": upload("r.wav", ref_bytes),
                                                  "pitch_shift": pitch}, HTTP_X_API_KEY=raw)
        assert resp.status_code == 201, resp.content
        ids.append(resp.json()["job_id"])
    registry.clear_cache()
    queue = Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())
    worker = CoverWorker([queue], connection=redis_connection())
    worker.work(burst=True)
    jobs = [CoverJob.objects.get(pk=i) for i in ids]
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error_message for j in jobs]
    # Every engine the two jobs used was built exactly once in this process.
    assert registry.load_counts[("separator", settings.COVER_SEPARATOR)] == 1
    # (the converter is built only when the separated stem holds a voice; either way at most once)
    assert all(n == 1 for n in registry.load_counts.values()), dict(registry.load_counts)
    for job in jobs:
        assert job.progress == 100 and job.stage == "finalize"
        assert set(job.timings) == {"preprocess", "separate", "infer", "mix", "finalize"}
        assert job.worker_name == worker.name and job.finished_at and job.expires_at
        for field in ("result", "vocals", "instrumental", "converted_vocals"):
            assert getattr(job, field).name == f"covers/{job.id}/{'cover' if field == 'result' else field}.wav"
        with job.result.open("rb") as fh:
            info = sf.info(fh)
        assert info.duration == pytest.approx(3.0, abs=0.01)
    assert not any(settings.COVER_WORK_ROOT.glob("*")) if settings.COVER_WORK_ROOT.exists() else True
