"""A real `manage.py rqworker cover` process (its RQ scheduler on, as the cover worker always
runs it) performs the periodic cleanup by itself: no cron, no call from the test."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from covers.models import CleanupRun, CoverJob
from tests.processes import Stack, e2e_env
from tests.service.conftest import make_key

from .test_cleanup import files_of, finished
from .test_jobs_admin import job_with_files

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_a_worker_with_its_scheduler_runs_the_cleanup_every_interval(tmp_path, settings):
    assert settings.MEDIA_ROOT == tmp_path / "media"  # the worker gets the same folder below
    key, _ = make_key("k")
    expired = finished(job_with_files(key), 25)
    fresh = finished(job_with_files(key), 1)
    running = job_with_files(key, status=CoverJob.Status.RUNNING, started_at=timezone.now(),
                             heartbeat_at=timezone.now() + timedelta(hours=1))
    gone, kept = files_of(expired), files_of(fresh) + files_of(running)
    env = e2e_env(tmp_path, COVER_CLEANUP_INTERVAL_SECONDS="2", COVER_RESULT_TTL_HOURS="24",
                  COVER_WORKER_DEAD_AFTER_SECONDS="3600")
    stack = Stack(tmp_path, env)
    t0 = time.monotonic()
    try:
        stack.start_worker()
        stack.wait_worker_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and CleanupRun.objects.filter(trigger="periodic").count() < 2:
            time.sleep(0.2)
        runs = list(CleanupRun.objects.order_by("started_at"))
        assert len(runs) >= 2, stack.logs()
    finally:
        stack.stop()
    took = time.monotonic() - t0
    assert runs[0].jobs_expired == 1 and runs[0].files_deleted == len(gone) and runs[0].errors == []
    assert runs[1].jobs_expired == 0
    gap = (runs[1].started_at - runs[0].started_at).total_seconds()
    assert 1.5 <= gap <= 15, gap  # about every 2 s (scheduler polls each second)
    assert CoverJob.objects.get(pk=expired.pk).expired_at is not None
    assert not any(default_storage.exists(n) for n in gone)
    assert all(default_storage.exists(n) for n in kept)
    assert CoverJob.objects.get(pk=running.pk).status == "running"
    print(f"worker start + two cleanup runs: {took:.1f} s")
