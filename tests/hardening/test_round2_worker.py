"""Issue 13, worker side: a decoder crash inside the worker fails the job, not the worker
(the worker decodes job inputs in a child process with limits, as the web process probes
uploads). Real worker class (covers.worker.CoverWorker) in this process, real Redis and database:
if the crash reached the worker's own process, it would end this test run."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from django.test import Client
from rq import Queue

from covers.models import CoverJob
from covers.queue import redis_connection
from inference import registry
from tests.hardening import crashers
from tests.service.conftest import ref_bytes, song_bytes, upload  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True)]


@registry.register("converter", "test-h2-quick")
class _Quick:
    """Returns the vocal's mono mix unchanged: the job's other stages stay real, and fast."""
    name, version = "test-h2-quick", "0"

    def convert(self, vocal, sr, reference, ref_sr, params, ctx):
        return vocal.mean(axis=0).astype(np.float32) if vocal.ndim == 2 else vocal


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _create(raw: str, song: bytes, ref: bytes) -> str:
    resp = Client().post("/api/v1/cover/jobs", {"song": upload("s.wav", song), "reference_voice": upload("r.wav", ref),
                                                "converter": "test-h2-quick"}, HTTP_X_API_KEY=raw)
    assert resp.status_code == 201, resp.content
    return resp.json()["job_id"]


DECODER_FAULTS = [
    ("segfault_on_marker", "SIGSEGV", "the decoder crashed on it (SIGSEGV)"),
    ("abort_on_marker", "SIGABRT", "the decoder crashed on it (SIGABRT)"),
    ("hang_on_marker", "hang", "took longer than 3 s"),
]


@pytest.mark.parametrize("target,what,fragment", DECODER_FAULTS, ids=[d[1] for d in DECODER_FAULTS])
def test_a_decoder_crash_in_the_worker_fails_the_job_and_the_worker_runs_the_next(
        api_key, song_bytes, ref_bytes, settings, monkeypatch, restore_signals, outcome, target, what, fragment):
    from covers import worker as worker_mod

    settings.COVER_QUALITY_REPORT = False
    settings.COVER_DECODE_ISOLATED = True
    settings.COVER_DECODE_TIMEOUT_SECONDS = 3
    monkeypatch.setattr(worker_mod, "DECODE_TARGET", getattr(crashers, target))
    _, raw = api_key
    bad = _create(raw, song_bytes + crashers.MARKER, ref_bytes)  # a WAV with trailing bytes: the probe accepts it
    good = _create(raw, song_bytes, ref_bytes)
    queue = Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())
    w = worker_mod.CoverWorker([queue], connection=redis_connection())
    try:
        t0 = time.monotonic()
        w.work(burst=True)
        took = time.monotonic() - t0
    finally:
        from inference import audio
        audio.isolate_decoding(None)  # this process is the test run's too
    failed, ok = CoverJob.objects.get(pk=bad), CoverJob.objects.get(pk=good)
    outcome(f"a decoder {what} on a job's song inside the worker",
            expected="job failed corrupt_audio in preprocess; the same worker runs the next job",
            measured=f"{failed.status} {failed.error_code}: {failed.error_message}; next job {ok.status} "
                     f"(both in {took:.1f} s)")
    assert (failed.status, failed.error_code, failed.stage) == ("failed", "corrupt_audio", "preprocess"), \
        failed.error_message
    assert failed.error_message.startswith("preprocess: song") and fragment in failed.error_message
    assert ok.status == "succeeded", ok.error_message
    assert failed.worker_name == ok.worker_name == w.name
    assert not any(settings.COVER_WORK_ROOT.glob("*/*.npy"))  # the child's sample file is gone


def test_a_decoder_crash_on_a_clients_vocal_stem_fails_only_that_job(api_key, song_bytes, ref_bytes, settings,
                                                                     monkeypatch, restore_signals, outcome):
    """Stems the client brings (``vocals``) are decoded the same way as a song."""
    from covers import worker as worker_mod

    settings.COVER_QUALITY_REPORT = False
    monkeypatch.setattr(worker_mod, "DECODE_TARGET", crashers.segfault_on_marker)
    _, raw = api_key
    resp = Client().post("/api/v1/cover/jobs", {"vocals": upload("v.wav", song_bytes + crashers.MARKER),
                                                "reference_voice": upload("r.wav", ref_bytes),
                                                "converter": "test-h2-quick"}, HTTP_X_API_KEY=raw)
    assert resp.status_code == 201, resp.content
    bad = resp.json()["job_id"]
    good = _create(raw, song_bytes, ref_bytes)
    w = worker_mod.CoverWorker([Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())],
                               connection=redis_connection())
    try:
        w.work(burst=True)
    finally:
        from inference import audio
        audio.isolate_decoding(None)
    failed, ok = CoverJob.objects.get(pk=bad), CoverJob.objects.get(pk=good)
    outcome("a decoder SIGSEGV on a client's vocals stem inside the worker",
            expected="job failed corrupt_audio naming vocals; the next job succeeds",
            measured=f"{failed.status} {failed.error_code}: {failed.error_message}; next job {ok.status}")
    assert (failed.status, failed.error_code) == ("failed", "corrupt_audio"), failed.error_message
    assert "vocals could not be read: the decoder crashed on it (SIGSEGV)" in failed.error_message
    assert ok.status == "succeeded", ok.error_message
