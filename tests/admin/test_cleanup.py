"""Cleanup against real files: exactly the expired jobs' files go, active jobs' files stay,
orphans older than the TTL go, the result endpoint turns 410, dry runs change nothing."""
from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone

from covers.cleanup import cleanup_run
from covers.models import CleanupRun, CoverJob
from tests.service.conftest import make_key
from tests.service.test_api import assert_error

from .test_jobs_admin import job_with_files

pytestmark = pytest.mark.django_db(transaction=True)
S = CoverJob.Status


def finished(job, hours_ago):
    t = timezone.now() - timedelta(hours=hours_ago)
    CoverJob.objects.filter(pk=job.pk).update(finished_at=t, created_at=t - timedelta(minutes=5))
    job.refresh_from_db()
    return job


def age(name, hours):
    path = default_storage.path(name)
    t = time.time() - hours * 3600
    os.utime(path, (t, t))


def files_of(job):
    return [getattr(job, f).name for f in ("song", "reference_voice", "result", "vocals", "instrumental",
                                           "converted_vocals") if getattr(job, f)]


@pytest.fixture
def scene(settings):
    settings.COVER_RESULT_TTL_HOURS = 24
    key, raw = make_key("k")
    s = {"raw": raw}
    s["old_ok"] = finished(job_with_files(key), 25)
    s["old_failed"] = finished(job_with_files(key, status=S.FAILED), 30)
    s["old_canceled"] = finished(job_with_files(key, status=S.CANCELED), 48)
    s["fresh_ok"] = finished(job_with_files(key), 1)
    s["running"] = job_with_files(key, status=S.RUNNING, started_at=timezone.now() - timedelta(hours=40))
    s["queued"] = job_with_files(key, status=S.QUEUED)
    for name in ("running", "queued"):  # old files of active jobs: still never touched
        for f in files_of(s[name]):
            age(f, 50)
    # orphans: a folder of a deleted job (old -> goes), a new stray file (stays),
    # an old unreferenced file next to a finished job's files (goes), one in a running job's folder (stays)
    s["orphan_old"] = default_storage.save(f"covers/{uuid.uuid4()}/result.wav", ContentFile(b"x" * 1000))
    age(s["orphan_old"], 30)
    s["orphan_new"] = default_storage.save(f"covers/{uuid.uuid4()}/song.wav", ContentFile(b"y" * 10))
    s["stray_old"] = default_storage.save(f"covers/{s['fresh_ok'].pk}/leftover.wav", ContentFile(b"z" * 10))
    age(s["stray_old"], 30)
    s["running_extra"] = default_storage.save(f"covers/{s['running'].pk}/partial.wav", ContentFile(b"p"))
    age(s["running_extra"], 30)
    return s


EXPIRED = ("old_ok", "old_failed", "old_canceled")
KEPT = ("fresh_ok", "running", "queued")


def test_cleanup_deletes_exactly_the_expired_and_orphan_files(scene, client):
    before = {k: files_of(scene[k]) for k in EXPIRED + KEPT}
    run = cleanup_run(trigger="command")
    assert run.pk and run.jobs_expired == 3 and run.errors == []
    assert run.files_deleted == sum(len(before[k]) for k in EXPIRED)
    assert run.orphans_deleted == 2
    assert run.bytes_freed > 1000
    for k in EXPIRED:
        job = CoverJob.objects.get(pk=scene[k].pk)
        assert job.expired_at is not None and not files_of(job)
        assert not any(default_storage.exists(n) for n in before[k])
        assert not os.path.isdir(default_storage.path(f"covers/{job.pk}"))
    for k in KEPT:
        job = CoverJob.objects.get(pk=scene[k].pk)
        assert job.expired_at is None and files_of(job) == before[k]
        assert all(default_storage.exists(n) for n in before[k]), k
    assert not default_storage.exists(scene["orphan_old"])
    assert not default_storage.exists(scene["stray_old"])
    assert default_storage.exists(scene["orphan_new"])
    assert default_storage.exists(scene["running_extra"])
    # the expired job's result is 410 Gone with a reason; the fresh one still downloads
    err = assert_error(client.get(f"/api/v1/cover/jobs/{scene['old_ok'].pk}/result",
                                  HTTP_X_API_KEY=scene["raw"]), 410, code="expired")
    assert "deleted" in err["message"] and "24 hours" in err["message"]
    assert client.get(f"/api/v1/cover/jobs/{scene['fresh_ok'].pk}/result",
                      HTTP_X_API_KEY=scene["raw"]).status_code == 200
    # a second run finds nothing more
    again = cleanup_run()
    assert (again.jobs_expired, again.files_deleted, again.orphans_deleted) == (0, 0, 0)


def test_dry_run_changes_nothing(scene, capsys):
    names = {k: files_of(scene[k]) for k in EXPIRED + KEPT}
    call_command("purge_expired_jobs", "--dry-run")
    out = capsys.readouterr().out
    assert "would expire 3 jobs" in out
    assert f"would delete {scene['orphan_old']}" in out and scene["orphan_new"] not in out
    assert CleanupRun.objects.count() == 0
    assert not CoverJob.objects.filter(expired_at__isnull=False).exists()
    assert all(default_storage.exists(n) for v in names.values() for n in v)
    assert default_storage.exists(scene["orphan_old"])
    call_command("purge_expired_jobs")
    assert "expired 3 jobs" in capsys.readouterr().out
    assert CleanupRun.objects.get().trigger == "command"


def test_admin_shows_the_last_runs(admin_client, scene):
    cleanup_run(trigger="periodic")
    page = admin_client.get("/admin/covers/cleanuprun/").content.decode()
    assert "periodic" in page and "MB" in page
    run = CleanupRun.objects.get()
    assert admin_client.get(f"/admin/covers/cleanuprun/{run.pk}/change/").status_code == 200


def test_run_history_is_bounded():
    old = CleanupRun.objects.create(started_at=timezone.now() - timedelta(days=31))
    recent = CleanupRun.objects.create(started_at=timezone.now() - timedelta(days=2))
    cleanup_run()
    assert not CleanupRun.objects.filter(pk=old.pk).exists() and CleanupRun.objects.filter(pk=recent.pk).exists()
    assert CleanupRun.objects.count() == 2
