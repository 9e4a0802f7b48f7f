"""The state machine: legal transitions only, terminal states final, conditional UPDATEs that
make a cancel racing a finishing worker safe; throttled progress; reconciler; notifications."""
from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.utils import timezone

from covers import notifications, services
from covers.models import CoverJob
from tests.service.conftest import make_key

pytestmark = pytest.mark.django_db(transaction=True)
S = CoverJob.Status


def new_job(status=S.QUEUED, owner=None, **kw) -> CoverJob:
    job = CoverJob(status=status, owner=owner, task_id="t", **kw)
    job.song.save("song.wav", ContentFile(b"RIFF"), save=False)
    job.reference_voice.save("reference_voice.wav", ContentFile(b"RIFF"), save=False)
    job.save()
    return job


LEGAL = [(S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELED), (S.QUEUED, S.FAILED), (S.RUNNING, S.SUCCEEDED),
         (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELED)]
ALL = [S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELED]


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", [S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELED])
def test_only_legal_transitions_happen(src, dst):
    job = new_job(status=src)
    out = services.cover_job_transition(job_id=job.id, to=dst)
    job.refresh_from_db()
    if (src, dst) in LEGAL:
        assert out is not None and job.status == dst
        if dst in CoverJob.TERMINAL:
            assert job.finished_at and job.expires_at > job.finished_at
        if dst == S.RUNNING:
            assert job.started_at and job.heartbeat_at
    else:
        assert out is None and job.status == src


def test_queued_cannot_be_set_again_by_transition():
    job = new_job()
    with pytest.raises(ValueError):
        services.cover_job_transition(job_id=job.id, to=S.QUEUED)


def test_a_result_only_comes_with_succeeded():
    job = new_job(status=S.RUNNING)
    services.cover_job_transition(job_id=job.id, to=S.FAILED, result="covers/x/cover.wav", error_message="e")
    job.refresh_from_db()
    assert job.status == S.FAILED and not job.result


def test_database_refuses_a_result_on_a_non_succeeded_row():
    from django.db import IntegrityError

    job = new_job(status=S.CANCELED)
    with pytest.raises(IntegrityError), transaction.atomic():
        CoverJob.objects.filter(pk=job.id).update(result="covers/x/cover.wav")


def test_worker_transitions_are_bound_to_their_attempt():
    job = new_job()
    assert services.cover_job_start(job_id=job.id, attempt=2) is None
    assert services.cover_job_start(job_id=job.id, attempt=1) is not None
    assert services.cover_job_transition(job_id=job.id, to=S.SUCCEEDED, attempt=2) is None
    assert CoverJob.objects.get(pk=job.id).status == S.RUNNING


def test_cancel_racing_success_never_leaves_canceled_with_a_result():
    outcomes = set()
    for _ in range(15):
        job = new_job(status=S.RUNNING)
        barrier = threading.Barrier(2)
        results = {}

        def succeed():
            barrier.wait()
            results["succeed"] = services.cover_job_transition(
                job_id=job.id, to=S.SUCCEEDED, attempt=1, result=f"covers/{job.id}/cover.wav")
            connection.close()

        def cancel():
            barrier.wait()
            results["cancel"] = services.cover_job_transition(job_id=job.id, to=S.CANCELED)
            connection.close()

        threads = [threading.Thread(target=succeed), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        job.refresh_from_db()
        assert (results["succeed"] is None) != (results["cancel"] is None)  # exactly one wins
        if job.status == S.CANCELED:
            assert not job.result
        else:
            assert job.status == S.SUCCEEDED and job.result
        outcomes.add(job.status)
        # the loser can never overwrite the winner afterwards
        assert services.cover_job_transition(job_id=job.id, to=S.CANCELED) is None
        assert services.cover_job_transition(job_id=job.id, to=S.SUCCEEDED, attempt=1) is None
    assert outcomes <= {S.CANCELED, S.SUCCEEDED}


def test_progress_is_throttled_but_stage_changes_always_written(monkeypatch, settings):
    settings.COVER_PROGRESS_MIN_INTERVAL = 10
    sent = []
    monkeypatch.setattr(notifications, "notify_job_changed", lambda job: sent.append((job.stage, job.progress)))
    job = services.cover_job_start(job_id=new_job().id, attempt=1)
    sent.clear()
    for i in range(50):
        assert services.cover_job_progress(job=job, stage="preprocess", progress=i / 10)
    assert services.cover_job_progress(job=job, stage="separate", progress=6)
    for i in range(50):
        services.cover_job_progress(job=job, stage="separate", progress=6 + i / 5)
    assert sent == [("preprocess", 0), ("separate", 6)]
    job.refresh_from_db()
    assert (job.stage, job.progress) == ("separate", 6)
    assert services.cover_job_progress(job=job, stage="separate", progress=30, force=True)
    assert CoverJob.objects.get(pk=job.id).progress == 30


def test_progress_on_a_canceled_job_tells_the_worker_to_stop():
    job = services.cover_job_start(job_id=new_job().id, attempt=1)
    services.cover_job_cancel(job=job)
    assert services.cover_job_progress(job=job, stage="infer", progress=50, force=True) is False
    assert CoverJob.objects.get(pk=job.id).status == S.CANCELED


def test_reconciler_fails_running_jobs_without_heartbeat(settings):
    settings.COVER_WORKER_DEAD_AFTER_SECONDS = 60
    dead = services.cover_job_start(job_id=new_job().id, attempt=1)
    alive = services.cover_job_start(job_id=new_job().id, attempt=1)
    CoverJob.objects.filter(pk=dead.id).update(heartbeat_at=timezone.now() - timedelta(seconds=61),
                                              stage="infer")
    out = services.cover_jobs_reconcile()
    assert out["failed_dead"] == 1
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == S.FAILED and dead.error_code == "worker_lost"
    assert dead.error_message.startswith("infer:") and "worker" in dead.error_message
    assert alive.status == S.RUNNING


def test_reconciler_requeues_rows_that_never_reached_redis_then_gives_up(settings, redis_client):
    from rq import Queue

    from covers.queue import redis_connection

    settings.COVER_QUEUED_GRACE_SECONDS = 0
    job = new_job()
    CoverJob.objects.filter(pk=job.id).update(created_at=timezone.now() - timedelta(seconds=5))
    out = services.cover_jobs_reconcile()
    assert out["requeued"] == 1
    job.refresh_from_db()
    assert job.status == S.QUEUED and job.attempt == 2 and job.task_id.endswith("-2")
    q = Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())
    assert job.task_id in q.job_ids
    assert services.cover_jobs_reconcile()["requeued"] == 0  # it is in Redis now
    q.empty()
    services.cover_jobs_reconcile()  # attempt 3
    q.empty()
    out = services.cover_jobs_reconcile()
    job.refresh_from_db()
    assert out["failed_unqueued"] == 1 and job.status == S.FAILED and job.error_message


def _receive_events(group: str, action, timeout: float = 3.0) -> list[dict]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()

    async def run():
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        await asyncio.get_running_loop().run_in_executor(None, action)
        events = []
        try:
            while True:
                events.append(await asyncio.wait_for(layer.receive(channel), timeout=timeout))
        except asyncio.TimeoutError:
            pass
        await layer.group_discard(group, channel)
        return events

    return asyncio.run(run())


def test_notifications_go_to_job_and_owner_groups_after_commit_only():
    key, _ = make_key("n")
    job = new_job(owner=key)

    def change():
        with transaction.atomic():
            services.cover_job_transition(job_id=job.id, to=S.RUNNING)
        connection.close()

    events = _receive_events(notifications.job_group(job.id), change, timeout=1.0)
    assert [e["status"] for e in events] == ["running"]
    ev = events[0]
    assert ev["type"] == "job.update" and ev["job_id"] == str(job.id) and ev["stage"] is None
    assert set(ev) == {"type", "job_id", "status", "stage", "progress", "error_message", "ts"}

    def rolled_back():
        try:
            with transaction.atomic():
                services.cover_job_transition(job_id=job.id, to=S.CANCELED)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        connection.close()

    assert _receive_events(notifications.owner_group(key.prefix), rolled_back, timeout=1.0) == []
    assert CoverJob.objects.get(pk=job.id).status == S.RUNNING


def test_notifier_never_raises_when_the_channel_layer_is_down(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}}
    from channels.layers import channel_layers
    channel_layers.backends.clear()
    try:
        job = new_job()
        assert services.cover_job_transition(job_id=job.id, to=S.RUNNING) is not None
    finally:
        channel_layers.backends.clear()
