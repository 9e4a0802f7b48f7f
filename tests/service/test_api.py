"""The HTTP API with the Django test client, a real database and a real local Redis."""
from __future__ import annotations

import socket

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from rq import Queue

from covers.models import APIKey, CoverJob
from tests import signals
from tests.service.conftest import make_key, upload, wav_bytes

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/v1/cover/jobs"


def post_job(client, key, song, ref, **fields):
    data = {"song": upload("song.wav", song), "reference_voice": upload("ref.wav", ref), **fields}
    headers = {"HTTP_X_API_KEY": key} if key else {}
    return client.post(JOBS, data, **headers)


def make_job(owner, status=CoverJob.Status.QUEUED, **kw) -> CoverJob:
    job = CoverJob(owner=owner, status=status, **kw)
    job.song.save("song.wav", ContentFile(b"RIFF"), save=False)
    job.reference_voice.save("reference_voice.wav", ContentFile(b"RIFF"), save=False)
    job.save()
    return job


def assert_error(resp, status, field=None, code=None):
    assert resp.status_code == status, resp.content
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "field"}
    assert err["message"]
    if field is not None:
        assert err["field"] == field, err
    if code is not None:
        assert err["code"] == code, err
    return err


# --- create -----------------------------------------------------------------------------------
def test_create_returns_201_location_task_id_and_is_queued(client, api_key, song_bytes, ref_bytes, settings):
    key, raw = api_key
    resp = post_job(client, raw, song_bytes, ref_bytes, pitch_shift="2", auto_pitch="true",
                    reference_text="la la")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    job_id = body["job_id"]
    assert resp["Location"].endswith(f"{JOBS}/{job_id}")
    assert body["status"] == "queued" and body["task_id"]
    assert body["parameters"]["pitch_shift"] == 2.0 and body["parameters"]["auto_pitch"] is True
    assert body["inputs"]["song"]["duration"] == pytest.approx(3.0, abs=0.05)
    detail = client.get(f"{JOBS}/{job_id}", HTTP_X_API_KEY=raw)
    assert detail.status_code == 200 and detail.json()["status"] == "queued"
    # the RQ job reached Redis (after commit), carrying the row id and attempt only
    from covers.queue import redis_connection
    q = Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())
    assert body["task_id"] in q.job_ids
    rq_job = q.fetch_job(body["task_id"])
    assert rq_job.args == (job_id, 1) and rq_job.timeout == settings.COVER_JOB_TIMEOUT
    job = CoverJob.objects.get(pk=job_id)
    assert job.owner == key and job.enqueued_at is not None
    assert job.song.name == f"covers/{job_id}/song.wav" and job.song.storage.exists(job.song.name)


def test_create_accepts_other_formats_by_content(client, api_key, ref_bytes):
    _, raw = api_key
    mix, *_ = signals.song(seconds=2.0, sr=22050)
    flac = wav_bytes(mix, 22050, fmt="FLAC")
    data = {"song": upload("no-extension", flac, "application/octet-stream"),
            "reference_voice": upload("ref.wav", ref_bytes)}
    resp = client.post(JOBS, data, HTTP_X_API_KEY=raw)
    assert resp.status_code == 201, resp.content
    assert CoverJob.objects.get().song.name.endswith("song.flac")


# --- auth -------------------------------------------------------------------------------------
def test_missing_key_is_401(client):
    err = assert_error(client.get(JOBS), 401, code="not_authenticated")
    assert "X-API-Key" in err["message"]


@pytest.mark.parametrize("bad", ["nope", "abc.def", "x" * 80, "."])
def test_bad_key_is_401(client, api_key, bad):
    assert_error(client.get(JOBS, HTTP_X_API_KEY=bad), 401, code="authentication_failed")


def test_wrong_secret_with_a_real_prefix_is_401(client, api_key):
    key, raw = api_key
    assert_error(client.get(JOBS, HTTP_X_API_KEY=key.prefix + ".wrongsecret"), 401)


def test_revoked_key_is_401(client, api_key):
    key, raw = api_key
    key.revoked = True
    key.save()
    err = assert_error(client.get(JOBS, HTTP_X_API_KEY=raw), 401)
    assert "revoked" in err["message"]


def test_expired_key_is_401(client, expired_key):
    _, raw = expired_key
    err = assert_error(client.get(JOBS, HTTP_X_API_KEY=raw), 401)
    assert "expired" in err["message"]


def test_last_used_is_recorded(client, api_key):
    key, raw = api_key
    assert key.last_used_at is None
    assert client.get(JOBS, HTTP_X_API_KEY=raw).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_staff_session_may_use_the_api(client, song_bytes, ref_bytes):
    staff = get_user_model().objects.create_user("staff", password="pw-123456", is_staff=True)
    client.force_login(staff)
    resp = client.post(JOBS, {"song": upload("s.wav", song_bytes), "reference_voice": upload("r.wav", ref_bytes)})
    assert resp.status_code == 201, resp.content
    job = CoverJob.objects.get()
    assert job.user == staff and job.owner is None
    assert client.get(JOBS).json()["count"] == 1


def test_plain_user_without_keys_gets_401(client):
    user = get_user_model().objects.create_user("plain", password="pw-123456")
    client.force_login(user)
    assert client.get(JOBS).status_code == 401


# --- reads ------------------------------------------------------------------------------------
def test_other_keys_job_is_404(client, api_key, other_key):
    job = make_job(other_key[0])
    assert_error(client.get(f"{JOBS}/{job.id}", HTTP_X_API_KEY=api_key[1]), 404, code="not_found")
    assert_error(client.post(f"{JOBS}/{job.id}/cancel", HTTP_X_API_KEY=api_key[1]), 404)
    assert_error(client.delete(f"{JOBS}/{job.id}", HTTP_X_API_KEY=api_key[1]), 404)
    assert_error(client.get(f"{JOBS}/{job.id}/result", HTTP_X_API_KEY=api_key[1]), 404)
    assert CoverJob.objects.get(pk=job.id).status == "queued"


@pytest.mark.parametrize("job_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_unknown_job_is_404(client, api_key, job_id):
    assert_error(client.get(f"{JOBS}/{job_id}", HTTP_X_API_KEY=api_key[1]), 404)


@pytest.mark.parametrize("status", ["queued", "running", "failed", "canceled"])
def test_result_before_success_is_409(client, api_key, status):
    job = make_job(api_key[0], status=status)
    err = assert_error(client.get(f"{JOBS}/{job.id}/result", HTTP_X_API_KEY=api_key[1]), 409, code="not_ready")
    assert status[:4] in err["message"]
    assert_error(client.get(f"{JOBS}/{job.id}/artifacts/vocals", HTTP_X_API_KEY=api_key[1]), 409)


def test_result_and_artifacts_download_when_succeeded(client, api_key):
    key, raw = api_key
    job = make_job(key, status="running")
    wav = wav_bytes(np.zeros(22050, dtype=np.float32), 22050)
    job.status = "succeeded"
    job.result.save("cover.wav", ContentFile(wav), save=False)
    job.vocals.save("vocals.wav", ContentFile(wav), save=False)
    job.save()
    resp = client.get(f"{JOBS}/{job.id}/result", HTTP_X_API_KEY=raw)
    assert resp.status_code == 200 and resp["Content-Type"] == "audio/wav"
    assert f'filename="cover-{job.id}.wav"' in resp["Content-Disposition"]
    assert b"".join(resp.streaming_content) == wav
    assert client.get(f"{JOBS}/{job.id}/artifacts/vocals", HTTP_X_API_KEY=raw).status_code == 200
    assert_error(client.get(f"{JOBS}/{job.id}/artifacts/instrumental", HTTP_X_API_KEY=raw), 404)
    assert_error(client.get(f"{JOBS}/{job.id}/artifacts/song", HTTP_X_API_KEY=raw), 404, field="name")
    links = client.get(f"{JOBS}/{job.id}", HTTP_X_API_KEY=raw).json()["links"]
    assert links["result"].endswith(f"/jobs/{job.id}/result") and set(links["artifacts"]) == {"vocals"}


def test_list_is_paginated_newest_first_filtered_and_scoped(client, api_key, other_key):
    key, raw = api_key
    jobs = [make_job(key, status=s) for s in ("queued", "canceled", "failed", "canceled", "running")]
    make_job(other_key[0])
    page1 = client.get(JOBS, {"page_size": 2}, HTTP_X_API_KEY=raw).json()
    assert page1["count"] == 5 and len(page1["results"]) == 2 and page1["next"]
    assert [r["job_id"] for r in page1["results"]] == [str(jobs[4].id), str(jobs[3].id)]
    page3 = client.get(JOBS, {"page_size": 2, "page": 3}, HTTP_X_API_KEY=raw).json()
    assert [r["job_id"] for r in page3["results"]] == [str(jobs[0].id)] and page3["next"] is None
    canceled = client.get(JOBS, {"status": "canceled"}, HTTP_X_API_KEY=raw).json()
    assert {r["job_id"] for r in canceled["results"]} == {str(jobs[1].id), str(jobs[3].id)}
    both = client.get(JOBS, {"status": "queued,running"}, HTTP_X_API_KEY=raw).json()
    assert both["count"] == 2
    assert_error(client.get(JOBS, {"status": "bogus"}, HTTP_X_API_KEY=raw), 400, field="status")


# --- upload validation ------------------------------------------------------------------------
def test_not_audio_is_415(client, api_key, ref_bytes):
    resp = post_job(client, api_key[1], b"this is plain text, not audio at all\n" * 50, ref_bytes)
    err = assert_error(resp, 415, field="song", code="unsupported_media")
    assert "song" in err["message"]
    assert CoverJob.objects.count() == 0


def test_reference_not_audio_is_415(client, api_key, song_bytes):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20
    assert_error(post_job(client, api_key[1], song_bytes, png), 415, field="reference_voice")


def test_song_too_long_is_422(client, api_key, song_bytes, ref_bytes, settings):
    settings.COVER_MAX_SONG_SECONDS = 2
    err = assert_error(post_job(client, api_key[1], song_bytes, ref_bytes), 422, field="song", code="too_long")
    assert "3.0 s" in err["message"]


def test_reference_too_short_is_422(client, api_key, song_bytes):
    short = wav_bytes(signals.reference_voice(seconds=1.0, sr=22050), 22050)
    assert_error(post_job(client, api_key[1], song_bytes, short), 422, field="reference_voice", code="too_short")


def test_empty_wav_is_422(client, api_key, ref_bytes):
    empty = wav_bytes(np.zeros(0, dtype=np.float32), 22050)
    assert_error(post_job(client, api_key[1], empty, ref_bytes), 422, field="song")


def test_bad_sample_rate_is_422(client, api_key, ref_bytes, settings):
    settings.COVER_MIN_SAMPLE_RATE = 32000
    mix, *_ = signals.song(seconds=2.0, sr=22050)
    err = assert_error(post_job(client, api_key[1], wav_bytes(mix, 22050), ref_bytes), 422, field="song")
    assert "22050" in err["message"]


def test_too_many_channels_is_422(client, api_key, ref_bytes):
    audio = np.zeros((4, 22050 * 2), dtype=np.float32)
    assert_error(post_job(client, api_key[1], wav_bytes(audio, 22050), ref_bytes), 422, field="song",
                 code="bad_channels")


def test_file_over_the_limit_is_413(client, api_key, song_bytes, ref_bytes, settings):
    settings.COVER_MAX_UPLOAD_MB = 0.05  # 50 KB; the song is ~130 KB
    err = assert_error(post_job(client, api_key[1], song_bytes, ref_bytes), 413)
    assert "MB" in err["message"]
    assert CoverJob.objects.count() == 0


def test_per_file_limit_of_the_key_is_413_naming_the_field(client, song_bytes, ref_bytes):
    _, raw = make_key("small", max_upload_mb=0.2)  # whole request passes, the song alone does not
    assert len(song_bytes) > 0.2 * 1024 * 1024 > len(ref_bytes)
    assert_error(post_job(client, raw, song_bytes, ref_bytes), 413, field="song", code="upload_too_large")


BAD_FIELDS = [
    ({"pitch_shift": "25"}, "pitch_shift"),
    ({"pitch_shift": "-24.5"}, "pitch_shift"),
    ({"pitch_shift": "abc"}, "pitch_shift"),
    ({"auto_pitch": "maybe"}, "auto_pitch"),
    ({"reference_text": "x" * 5001}, "reference_text"),
    ({"target_text": "y" * 5001}, "target_text"),
    ({"model_id": "../etc/passwd"}, "model_id"),
    ({"separator": "no-such-engine"}, "separator"),
    ({"converter": "no-such-engine"}, "converter"),
]


@pytest.mark.parametrize("fields,field", BAD_FIELDS)
def test_bad_parameters_are_400_naming_the_field(client, api_key, song_bytes, ref_bytes, fields, field):
    err = assert_error(post_job(client, api_key[1], song_bytes, ref_bytes, **fields), 400, field=field)
    assert field in err["message"]
    assert CoverJob.objects.count() == 0


@pytest.mark.parametrize("missing", ["song", "reference_voice"])
def test_missing_file_is_400(client, api_key, song_bytes, ref_bytes, missing):
    data = {"song": upload("s.wav", song_bytes), "reference_voice": upload("r.wav", ref_bytes)}
    del data[missing]
    assert_error(client.post(JOBS, data, HTTP_X_API_KEY=api_key[1]), 400, field=missing)


@pytest.mark.parametrize("fields", [{"pitch_shift": "24"}, {"pitch_shift": "-24"}, {"reference_text": "x" * 5000}])
def test_boundary_parameters_are_accepted(client, api_key, song_bytes, ref_bytes, fields):
    assert post_job(client, api_key[1], song_bytes, ref_bytes, **fields).status_code == 201


def test_concurrent_job_limit_of_a_key_is_429(client, song_bytes, ref_bytes):
    key, raw = make_key("limited", max_concurrent_jobs=1)
    assert post_job(client, raw, song_bytes, ref_bytes).status_code == 201
    assert_error(post_job(client, raw, song_bytes, ref_bytes), 429, code="too_many_active_jobs")


# --- Redis unreachable -------------------------------------------------------------------------
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_redis_unreachable_is_503_and_leaves_no_row(client, api_key, song_bytes, ref_bytes, settings, _media):
    url = f"redis://127.0.0.1:{_closed_port()}/15"
    settings.RQ_QUEUES = {name: {**cfg, "URL": url} for name, cfg in settings.RQ_QUEUES.items()}
    err = assert_error(post_job(client, api_key[1], song_bytes, ref_bytes), 503, code="queue_unavailable")
    assert "Redis" in err["message"]
    assert CoverJob.objects.count() == 0
    assert not any(p.is_file() for p in _media.rglob("*"))


def test_enqueue_failing_after_commit_is_503_and_removes_the_row(client, api_key, song_bytes, ref_bytes,
                                                                 monkeypatch, _media):
    import redis

    from covers import services

    def broken(job):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(services, "_enqueue", broken)
    assert_error(post_job(client, api_key[1], song_bytes, ref_bytes), 503)
    assert CoverJob.objects.count() == 0
    assert not any(p.is_file() for p in _media.rglob("*"))


# --- cancel / delete -------------------------------------------------------------------------
def test_cancel_is_idempotent_and_a_canceled_queued_job_never_starts(client, api_key, song_bytes, ref_bytes,
                                                                     settings):
    _, raw = api_key
    body = post_job(client, raw, song_bytes, ref_bytes).json()
    url = f"{JOBS}/{body['job_id']}/cancel"
    first = client.post(url, HTTP_X_API_KEY=raw)
    assert first.status_code == 200 and first.json()["status"] == "canceled"
    second = client.post(url, HTTP_X_API_KEY=raw)
    assert second.status_code == 200 and second.json()["status"] == "canceled"
    assert second.json()["finished_at"] == first.json()["finished_at"]
    from covers.queue import redis_connection
    q = Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())
    assert body["task_id"] not in q.job_ids
    # even if the RQ job ran anyway, it would not start the canceled row
    from covers.jobs import run_cover_job
    assert run_cover_job(body["job_id"], 1) == "canceled"
    assert CoverJob.objects.get(pk=body["job_id"]).started_at is None


def test_cancel_of_a_finished_job_is_409(client, api_key):
    job = make_job(api_key[0], status="failed", error_message="x")
    assert_error(client.post(f"{JOBS}/{job.id}/cancel", HTTP_X_API_KEY=api_key[1]), 409, code="already_finished")


def test_delete_cancels_and_removes_files(client, api_key, song_bytes, ref_bytes):
    _, raw = api_key
    body = post_job(client, raw, song_bytes, ref_bytes).json()
    job = CoverJob.objects.get(pk=body["job_id"])
    storage, names = job.song.storage, [job.song.name, job.reference_voice.name]
    assert all(storage.exists(n) for n in names)
    resp = client.delete(f"{JOBS}/{job.id}", HTTP_X_API_KEY=raw)
    assert resp.status_code == 204
    assert not any(storage.exists(n) for n in names)
    assert_error(client.get(f"{JOBS}/{job.id}", HTTP_X_API_KEY=raw), 404)
    assert_error(client.delete(f"{JOBS}/{job.id}", HTTP_X_API_KEY=raw), 404)


# --- schema and docs ---------------------------------------------------------------------------
def test_openapi_schema_and_docs_render(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    doc = schema.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for p in ("/api/v1/cover/jobs", "/api/v1/cover/jobs/{job_id}", "/api/v1/cover/jobs/{job_id}/result",
              "/api/v1/cover/jobs/{job_id}/artifacts/{name}", "/api/v1/cover/jobs/{job_id}/cancel"):
        assert p in paths, p
    assert set(paths["/api/v1/cover/jobs"]) >= {"get", "post"}
    assert set(paths["/api/v1/cover/jobs/{job_id}"]) >= {"get", "delete"}
    assert doc["components"]["securitySchemes"]["ApiKeyAuth"]["name"] == "X-API-Key"
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_create_api_key_command_prints_the_key_alone_on_the_last_line(client):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_key", "cli-demo", stdout=out, stderr=StringIO())
    raw = out.getvalue().strip().splitlines()[-1]
    assert "." in raw and " " not in raw
    assert client.get(JOBS, HTTP_X_API_KEY=raw).status_code == 200
    assert APIKey.objects.get(name="cli-demo").hashed_key != raw
