"""API keys through the admin: shown once, authenticate, revoke/expiry -> 401, limits -> 429/413."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from covers.models import APIKey, CoverJob
from tests import signals
from tests.service.conftest import make_key, wav_bytes
from tests.service.test_api import assert_error, make_job, post_job

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/v1/cover/jobs"
ADD = "/admin/covers/apikey/add/"


def _create_in_admin(admin_client, **fields):
    data = {"name": "partner", "owner": "", "expiry_date_0": "", "expiry_date_1": "", "max_concurrent_jobs": "",
            "jobs_per_day": "", "max_upload_mb": "", "max_song_seconds": "", **fields}
    resp = admin_client.post(ADD, data, follow=True)
    assert resp.redirect_chain and resp.redirect_chain[-1][1] == 302, resp.content.decode()[:3000]
    page = resp.content.decode()
    keys = re.findall(r"is: (\S+)\. Please store it somewhere safe", page)
    assert len(keys) == 1, page[:3000]
    return APIKey.objects.get(name=fields.get("name", "partner")), keys[0]


def test_admin_shows_a_new_key_once_and_it_authenticates(admin_client, client):
    obj, raw = _create_in_admin(admin_client, name="partner", jobs_per_day="5")
    assert raw.startswith(obj.prefix + ".") and obj.jobs_per_day == 5
    assert raw not in obj.hashed_key  # only a hash is stored
    # later pages show the prefix only
    for url in (f"/admin/covers/apikey/{obj.pk}/change/", "/admin/covers/apikey/"):
        page = admin_client.get(url).content.decode()
        assert obj.prefix in page and raw not in page
    # it authenticates, and its use is recorded
    assert client.get(JOBS, HTTP_X_API_KEY=raw).status_code == 200
    obj.refresh_from_db()
    assert obj.last_used_at is not None
    assert "Last used at" in admin_client.get(f"/admin/covers/apikey/{obj.pk}/change/").content.decode()


def test_revoke_action_and_expiry_give_401(admin_client, client):
    obj, raw = _create_in_admin(admin_client, name="to-revoke")
    assert client.get(JOBS, HTTP_X_API_KEY=raw).status_code == 200
    resp = admin_client.post("/admin/covers/apikey/", {"action": "revoke_keys", "_selected_action": [obj.pk]})
    assert resp.status_code == 302
    obj.refresh_from_db()
    assert obj.revoked
    err = assert_error(client.get(JOBS, HTTP_X_API_KEY=raw), 401)
    assert "revoked" in err["message"]

    soon, raw2 = make_key("expiring", expiry_date=timezone.now() + timedelta(hours=1))
    assert client.get(JOBS, HTTP_X_API_KEY=raw2).status_code == 200
    APIKey.objects.filter(pk=soon.pk).update(expiry_date=timezone.now() - timedelta(seconds=1))
    err = assert_error(client.get(JOBS, HTTP_X_API_KEY=raw2), 401)
    assert "expired" in err["message"]


def test_concurrent_jobs_limit_is_429(client, song_bytes, ref_bytes):
    key, raw = make_key("one-at-a-time", max_concurrent_jobs=1)
    assert post_job(client, raw, song_bytes, ref_bytes).status_code == 201
    err = assert_error(post_job(client, raw, song_bytes, ref_bytes), 429, code="too_many_active_jobs")
    assert "1" in err["message"]
    CoverJob.objects.filter(owner=key).update(status=CoverJob.Status.SUCCEEDED)  # finished: room again
    assert post_job(client, raw, song_bytes, ref_bytes).status_code == 201


def test_jobs_per_day_limit_is_429(client, song_bytes, ref_bytes):
    key, raw = make_key("daily", jobs_per_day=2)
    old = make_job(key, status=CoverJob.Status.SUCCEEDED)
    CoverJob.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=25))  # outside 24 h
    make_job(key, status=CoverJob.Status.FAILED)
    assert post_job(client, raw, song_bytes, ref_bytes).status_code == 201
    assert_error(post_job(client, raw, song_bytes, ref_bytes), 429, code="daily_limit")


def test_upload_size_limit_of_the_key_is_413(client, song_bytes, ref_bytes):
    _, raw = make_key("small-files", max_upload_mb=0.05)
    assert_error(post_job(client, raw, song_bytes, ref_bytes), 413, field="song", code="upload_too_large")
    assert CoverJob.objects.count() == 0


def test_song_duration_limit_of_the_key_is_413(client, ref_bytes):
    _, raw = make_key("short-songs", max_song_seconds=2)
    mix, *_ = signals.song(seconds=3.0, sr=22050)
    err = assert_error(post_job(client, raw, wav_bytes(mix, 22050), ref_bytes), 413, field="song",
                       code="song_too_long")
    assert "2 s" in err["message"]
    assert CoverJob.objects.count() == 0
    # the same song passes a key without that limit
    _, free = make_key("free")
    assert post_job(client, free, wav_bytes(mix, 22050), ref_bytes).status_code == 201


def test_a_concurrent_request_cannot_take_the_last_slot_too(client, song_bytes, ref_bytes, monkeypatch, settings):
    """Another request creates a job while this one probes its uploads (after the first check):
    the re-check under the key's row lock refuses this one, and its stored files are removed."""
    from covers import services

    key, raw = make_key("racy", max_concurrent_jobs=1)
    real = services.inspect_upload

    def inspect_while_another_request_wins(field, *a, **kw):
        if field == "song" and not CoverJob.objects.filter(owner=key).exists():
            make_job(key)  # the other request's job
        return real(field, *a, **kw)

    monkeypatch.setattr(services, "inspect_upload", inspect_while_another_request_wins)
    assert_error(post_job(client, raw, song_bytes, ref_bytes), 429, code="too_many_active_jobs")
    assert CoverJob.objects.filter(owner=key).count() == 1
    stored = {p.name for p in (settings.MEDIA_ROOT / "covers").rglob("*") if p.is_file()}
    assert stored == {"song.wav", "reference_voice.wav"}  # only the other job's files
