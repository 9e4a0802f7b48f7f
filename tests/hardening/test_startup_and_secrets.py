"""The service refuses to start on an evicting Redis (covers.E001), and API keys never leak:
not into logs, RQ job arguments, Redis, admin pages or cookies."""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from tests.hardening.test_faults import RedisServer
from tests.processes import ROOT, e2e_env, free_port
from tests.service.conftest import upload, wav_bytes
from tests import signals

JOBS = "/api/v1/cover/jobs"


@pytest.fixture(scope="module")
def lru_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("lru-redis"))
    server.start(policy="allkeys-lru")
    yield server
    server.kill()


@pytest.mark.parametrize("what", ["check --deploy", "rqworker", "daphne"])
def test_the_service_refuses_to_start_on_an_evicting_redis(e2e_database, lru_redis, tmp_path, outcome, what):
    env = e2e_env(tmp_path, TEST_REDIS_URL=lru_redis.url)
    args = {"check --deploy": [sys.executable, "manage.py", "check", "--deploy"],
            "rqworker": [sys.executable, "manage.py", "rqworker", "cover", "--burst"],
            "daphne": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(free_port()),
                       "coverproject.asgi:application"]}[what]
    t0 = time.monotonic()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    outcome(f"{what} with Redis maxmemory-policy=allkeys-lru", expected="refuses to start, clear message",
            measured=f"exit {out.returncode} after {time.monotonic() - t0:.1f} s: "
                     f"{'covers.E001 ... needs noeviction' if 'needs noeviction' in text else text[-120:]}")
    assert out.returncode != 0, text
    assert "covers.E001" in text and "maxmemory-policy=allkeys-lru" in text and "noeviction" in text, text


def test_the_check_passes_on_noeviction_and_warns_when_allowed(settings, lru_redis):
    from covers.checks import check_redis_noeviction, redis_eviction_problem

    assert redis_eviction_problem(settings.REDIS_URL) is None  # the test Redis: noeviction
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, settings.COVER_QUEUE_NAME: {"URL": lru_redis.url}}
    settings.COVER_REDIS_REQUIRE_NOEVICTION = False
    assert [m.id for m in check_redis_noeviction()] == ["covers.W001"]


# --------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_an_api_key_never_leaks(client, api_key, redis_client, caplog, outcome):
    from django.contrib.auth import get_user_model
    from rq import Queue

    from covers.models import APIKey, CoverJob

    obj, raw = api_key
    secret = raw.partition(".")[2]
    caplog.set_level(logging.DEBUG)
    song = wav_bytes(signals.song(seconds=2.0, sr=22050)[0], 22050)
    ref = wav_bytes(signals.reference_voice(seconds=4.0, sr=22050), 22050)
    resp = client.post(JOBS, {"song": upload("s.wav", song), "reference_voice": upload("r.wav", ref)},
                       HTTP_X_API_KEY=raw)
    assert resp.status_code == 201
    job_id = resp.json()["job_id"]
    client.get(f"{JOBS}/{job_id}", HTTP_X_API_KEY=raw)
    client.get(f"{JOBS}/nope", HTTP_X_API_KEY=raw)                       # a 404
    client.post(JOBS, {"pitch_shift": "99"}, HTTP_X_API_KEY=raw)          # a 400
    client.get(JOBS, HTTP_X_API_KEY=raw[:-1] + ("x" if raw[-1] != "x" else "y"))  # a 401
    leaks = {}
    leaks["logs"] = secret in caplog.text
    # RQ job arguments: the job id and attempt only
    rq_jobs = Queue("cover", connection=redis_client).jobs
    assert [tuple(j.args) for j in rq_jobs] == [(job_id, 1)]
    leaks["job arguments"] = any(secret in repr(j.args) + repr(j.kwargs) for j in rq_jobs)
    # anything in Redis at all
    leaks["redis"] = any(secret.encode() in (redis_client.dump(k) or b"") for k in redis_client.keys("*"))
    # the database holds a hash only
    leaks["database"] = APIKey.objects.filter(hashed_key__contains=secret).exists() or \
        CoverJob.objects.filter(parameters__icontains=secret).exists()
    # admin pages, as a superuser
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(admin)
    pages = ["/admin/covers/apikey/", f"/admin/covers/apikey/{obj.pk}/change/", "/admin/covers/coverjob/",
             f"/admin/covers/coverjob/{job_id}/change/"]
    bodies = []
    for page in pages:
        r = client.get(page)
        assert r.status_code == 200, (page, r.status_code)
        bodies.append(r.content.decode(errors="replace"))
    leaks["admin pages"] = any(secret in b for b in bodies)
    leaks["cookies"] = any(secret in m.value for m in client.cookies.values())
    outcome("API key secret in logs, RQ job args, Redis, DB, admin pages, cookies", expected="nowhere",
            measured="found in: " + (", ".join(k for k, v in leaks.items() if v) or "none"))
    assert not any(leaks.values()), leaks
