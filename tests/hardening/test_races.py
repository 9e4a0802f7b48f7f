"""Racing writers on one job (issue 6, fault 9): a cancel and a finishing worker, the reconciler
and a finishing worker, a stale attempt after a re-enqueue. Every change is one conditional
UPDATE (covers.services.cover_job_transition, compare-and-set on status and attempt), so exactly
one terminal state wins and a stale attempt never writes. Real threads, real database."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from covers import services
from covers.models import CoverJob
from tests.service.conftest import make_key

pytestmark = pytest.mark.django_db(transaction=True)
ROUNDS = 12


def _race(*fns):
    barrier = threading.Barrier(len(fns))
    results = [None] * len(fns)

    def run(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except Exception as exc:  # a loser may see Conflict: that is an answer, not a crash
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def _running_job(owner, **fields) -> CoverJob:
    now = timezone.now()
    return CoverJob.objects.create(owner=owner, status="running", attempt=1, started_at=now, heartbeat_at=now,
                                   stage="finalize", song="covers/x/song.wav", reference_voice="covers/x/r.wav",
                                   **fields)


def test_cancel_racing_a_finishing_worker_leaves_exactly_one_terminal_state(outcome):
    key, _ = make_key("race")
    wins = {"canceled": 0, "succeeded": 0}
    for _ in range(ROUNDS):
        job = _running_job(key)
        _race(lambda: services.cover_job_cancel(job=job),
              lambda: services.cover_job_transition(job_id=job.id, to="succeeded", attempt=1,
                                                    result=f"covers/{job.id}/cover.wav"))
        final = CoverJob.objects.get(pk=job.pk)
        assert final.status in wins, final.status
        assert bool(final.result) == (final.status == "succeeded")  # no result on a canceled job
        wins[final.status] += 1
    outcome(f"cancel vs finish, {ROUNDS} races", expected="exactly one terminal state each",
            measured=f"canceled {wins['canceled']}, succeeded {wins['succeeded']}, other 0")


def test_the_reconciler_racing_a_finishing_worker_leaves_exactly_one_terminal_state(outcome, settings):
    key, _ = make_key("race2")
    old = timezone.now() - timedelta(seconds=settings.COVER_WORKER_DEAD_AFTER_SECONDS + 60)
    wins = {"failed": 0, "succeeded": 0}
    for _ in range(ROUNDS):
        job = _running_job(key)
        CoverJob.objects.filter(pk=job.pk).update(heartbeat_at=old)
        _race(lambda: services.cover_job_fail(job_id=job.id, attempt=1, code="worker_lost",
                                              message="finalize: the worker stopped"),
              lambda: services.cover_job_transition(job_id=job.id, to="succeeded", attempt=1,
                                                    result=f"covers/{job.id}/cover.wav"))
        final = CoverJob.objects.get(pk=job.pk)
        assert final.status in wins and bool(final.result) == (final.status == "succeeded")
        wins[final.status] += 1
    outcome(f"reconciler (fail) vs finish, {ROUNDS} races", expected="exactly one terminal state each",
            measured=f"failed {wins['failed']}, succeeded {wins['succeeded']}, other 0")


def test_a_stale_attempt_never_writes_over_a_newer_one(outcome):
    key, _ = make_key("stale")
    job = CoverJob.objects.create(owner=key, status="queued", attempt=2, song="covers/x/s.wav",
                                  reference_voice="covers/x/r.wav")
    assert services.cover_job_start(job_id=job.id, attempt=1) is None
    assert services.cover_job_start(job_id=job.id, attempt=2) is not None
    stale = [services.cover_job_transition(job_id=job.id, to="succeeded", attempt=1, result="covers/x/old.wav"),
             services.cover_job_fail(job_id=job.id, attempt=1, message="old attempt failed"),
             services.cover_job_heartbeat(job_id=job.id, attempt=1)]
    job.refresh_from_db()
    outcome("a stale attempt (1) writes after a re-enqueue (attempt 2)", expected="no write lands",
            measured=f"writes accepted: {sum(bool(x) for x in stale)}; row {job.status}, attempt {job.attempt}")
    assert stale == [None, None, False]
    assert (job.status, job.attempt, job.result.name) == ("running", 2, "")


def test_fifty_concurrent_posts_against_a_limit_of_two_accept_exactly_two(outcome, settings, tmp_path):
    """50 simultaneous creates by one key whose limit is 2 active jobs: exactly 2 are accepted and
    48 get 429 (the count is re-checked under the key's row lock inside the create transaction)."""
    from django.test import Client

    from tests import signals
    from tests.service.conftest import upload, wav_bytes

    settings.MEDIA_ROOT = tmp_path / "media"
    key, raw = make_key("burst", max_concurrent_jobs=2)
    song = wav_bytes(signals.song(seconds=1.5, sr=16000)[0], 16000)
    ref = wav_bytes(signals.reference_voice(seconds=3.5, sr=16000), 16000)

    def one():
        return Client().post("/api/v1/cover/jobs", {"song": upload("s.wav", song), "reference_voice": upload(
            "r.wav", ref)}, HTTP_X_API_KEY=raw).status_code

    codes = _race(*([one] * 50))
    counts = {c: codes.count(c) for c in sorted(set(codes), key=str)}
    outcome("50 concurrent POSTs, per-key limit 2", expected="exactly 2 accepted, 48 x 429",
            measured=", ".join(f"{n} x {c}" for c, n in counts.items()))
    assert codes.count(201) == 2 and codes.count(429) == 48, counts
    assert CoverJob.objects.filter(owner=key).count() == 2
