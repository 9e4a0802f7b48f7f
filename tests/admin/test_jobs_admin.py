"""The cover-job admin: list, filters, search, detail with audio players served by an admin-only
view, and the cancel / retry / purge actions."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone
from rq import Queue

from covers.models import CoverJob
from covers.queue import redis_connection
from tests.service.conftest import make_key
from tests.service.test_api import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

LIST = "/admin/covers/coverjob/"


def job_with_files(owner, status=CoverJob.Status.SUCCEEDED, **kw) -> CoverJob:
    job = CoverJob(owner=owner, status=status, parameters={"pitch_shift": 1.0, "converter": "world"}, **kw)
    job.song.save("song.wav", ContentFile(b"RIFF-song"), save=False)
    job.reference_voice.save("reference_voice.wav", ContentFile(b"RIFF-ref"), save=False)
    if status == CoverJob.Status.SUCCEEDED:
        for field in ("result", "vocals", "instrumental", "converted_vocals"):
            getattr(job, field).save(f"{field}.wav", ContentFile(f"RIFF-{field}".encode()), save=False)
    if status in CoverJob.TERMINAL:
        job.finished_at = timezone.now()
        job.started_at = job.finished_at - timedelta(seconds=12)
    job.save()
    return job


def act(admin_client, action, *jobs, follow=True):
    return admin_client.post(LIST, {"action": action, "_selected_action": [str(j.pk) for j in jobs]},
                             follow=follow)


def test_list_filters_and_search(admin_client):
    key, _ = make_key("k")
    done = job_with_files(key, timings={"separate": 1.5})
    queued = job_with_files(key, status=CoverJob.Status.QUEUED)
    page = admin_client.get(LIST).content.decode()
    assert str(done.pk) in page and str(queued.pk) in page and "12.0 s" in page
    page = admin_client.get(LIST + "?status__exact=queued").content.decode()
    assert str(queued.pk) in page and str(done.pk) not in page
    assert admin_client.get(LIST + f"?owner__id__exact={key.pk}").status_code == 200
    assert admin_client.get(LIST + "?stage__exact=separate").status_code == 200
    for term in (str(done.pk), str(done.pk)[:8]):
        page = admin_client.get(LIST, {"q": term}).content.decode()
        assert str(done.pk) in page and str(queued.pk) not in page, term
    assert admin_client.get(LIST, {"q": "zzz-not-an-id"}).status_code == 200


def test_detail_has_players_timings_and_error_and_files_stream(admin_client, client):
    key, _ = make_key("k")
    job = job_with_files(key, timings={"preprocess": 0.1, "separate": 2.25})
    page = admin_client.get(f"{LIST}{job.pk}/change/").content.decode()
    assert page.count("<audio controls") == 6
    assert "2.25 s" in page
    url = f"{LIST}{job.pk}/file/result/"
    assert url in page
    resp = admin_client.get(url)
    assert resp.status_code == 200 and b"".join(resp.streaming_content) == b"RIFF-result"
    assert resp["Content-Type"] == "audio/x-wav" or resp["Content-Type"].startswith("audio/")
    assert client.get(url).status_code == 302  # not logged in: to the login page
    assert admin_client.get(f"{LIST}{job.pk}/file/secret/").status_code == 404
    failed = job_with_files(key, status=CoverJob.Status.FAILED, error_code="engine_error",
                            error_message="separate: the separation command failed")
    page = admin_client.get(f"{LIST}{failed.pk}/change/").content.decode()
    assert "engine_error" in page and "the separation command failed" in page


def test_cancel_action(admin_client):
    key, _ = make_key("k")
    queued = job_with_files(key, status=CoverJob.Status.QUEUED)
    done = job_with_files(key)
    resp = act(admin_client, "cancel_jobs", queued, done)
    text = resp.content.decode()
    assert "Canceled 1 job" in text and "already succeeded" in text
    assert CoverJob.objects.get(pk=queued.pk).status == "canceled"
    assert CoverJob.objects.get(pk=done.pk).status == "succeeded"


def test_retry_creates_a_new_job_from_the_stored_inputs(admin_client):
    key, _ = make_key("k")
    failed = job_with_files(key, status=CoverJob.Status.FAILED, error_message="infer: boom")
    resp = act(admin_client, "retry_jobs", failed)
    assert "Re-enqueued 1 job" in resp.content.decode()
    new = CoverJob.objects.exclude(pk=failed.pk).get()
    assert new.status == "queued" and new.owner_id == key.pk and new.attempt == 1
    assert new.parameters["retry_of"] == str(failed.pk) and new.parameters["pitch_shift"] == 1.0
    assert new.song.name.startswith(f"covers/{new.pk}/") and new.song.read() == b"RIFF-song"
    assert new.reference_voice.read() == b"RIFF-ref"
    assert CoverJob.objects.get(pk=failed.pk).status == "failed"  # the old row is untouched
    queue = Queue("cover", connection=redis_connection())
    assert new.task_id in queue.job_ids


def test_purge_deletes_files_and_the_result_turns_410(admin_client, client):
    key, raw = make_key("k")
    job = job_with_files(key)
    paths = [getattr(job, f).path for f in ("song", "reference_voice", "result", "vocals")]
    assert client.get(f"/api/v1/cover/jobs/{job.pk}/result", HTTP_X_API_KEY=raw).status_code == 200
    running = job_with_files(key, status=CoverJob.Status.RUNNING)
    resp = act(admin_client, "purge_files", job, running)
    text = resp.content.decode()
    assert "Purged the files of 1 job" in text and "cancel it before purging" in text
    job.refresh_from_db()
    assert job.expired_at is not None and not job.result and not job.song
    assert not any(__import__("os").path.exists(p) for p in paths)
    assert running.song.storage.exists(running.song.name)  # the running job keeps its files
    err = assert_error(client.get(f"/api/v1/cover/jobs/{job.pk}/result", HTTP_X_API_KEY=raw), 410, code="expired")
    assert "deleted" in err["message"]
    detail = client.get(f"/api/v1/cover/jobs/{job.pk}", HTTP_X_API_KEY=raw).json()
    assert detail["expired_at"] and "result" not in detail["links"]
    # an expired job cannot be retried
    assert "cannot be retried" in act(admin_client, "retry_jobs", job).content.decode()


def test_admin_index_links_the_rq_dashboard(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert 'href="/django-rq/"' in page and "Cleanup runs" in page
    assert admin_client.get("/django-rq/").status_code == 200


def test_detail_cannot_be_saved_and_delete_removes_files(admin_client):
    key, _ = make_key("k")
    job = job_with_files(key)
    page = admin_client.get(f"{LIST}{job.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    CoverJob.objects.filter(pk=job.pk).update(progress=77)
    admin_client.post(f"{LIST}{job.pk}/change/", {})  # a stale save must not write the row
    assert CoverJob.objects.get(pk=job.pk).progress == 77
    path = job.result.path
    resp = admin_client.post(f"{LIST}{job.pk}/delete/", {"post": "yes"})
    assert resp.status_code == 302 and not CoverJob.objects.filter(pk=job.pk).exists()
    assert not __import__("os").path.exists(path)


def test_staff_without_change_permission_sees_no_actions(client):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_coverjob"))
    client.force_login(user)
    key, _ = make_key("k")
    job = job_with_files(key, status=CoverJob.Status.QUEUED)
    page = client.get(LIST).content.decode()
    assert str(job.pk) in page and "cancel_jobs" not in page
    client.post(LIST, {"action": "cancel_jobs", "_selected_action": [str(job.pk)]})
    assert CoverJob.objects.get(pk=job.pk).status == "queued"
    assert client.get(f"{LIST}{job.pk}/file/song/").status_code == 200  # viewing is allowed
