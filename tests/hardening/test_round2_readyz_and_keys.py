"""Issue 13, risks: /readyz tells strangers the status only (no host names, pids, worker names,
media path or disk sizes); new API keys start with the limits of the settings (a new key queuing
too many jobs gets 429), which staff change per key in the admin."""
from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rq import Queue, Worker

from covers.models import APIKey
from covers.queue import redis_connection
from tests.service.conftest import ref_bytes, song_bytes, upload  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "readyz-token-0123456789"
PRIVATE = ("hostname", "pid", "health-h2-worker", "path", "free_mb", "total_mb", "workers", "checks")


@pytest.fixture
def worker(settings):
    w = Worker([Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())], connection=redis_connection(),
               name="health-h2-worker")
    w.register_birth()
    yield w
    w.register_death()


def test_readyz_tells_strangers_the_status_only(client, settings, worker, outcome):
    settings.COVER_METRICS_TOKEN = TOKEN
    answers = {}
    for who, kwargs in (("anonymous", {}), ("wrong token", {"HTTP_AUTHORIZATION": "Bearer nope"}),
                        ("an API key", {"HTTP_X_API_KEY": APIKey.objects.create_key(name="k")[1]})):
        resp = client.get("/readyz", **kwargs)
        answers[who] = (resp.status_code, resp.json())
    user = get_user_model().objects.create_user("plain", password="pw-123456789")
    client.force_login(user)
    resp = client.get("/readyz")
    answers["logged-in non-staff user"] = (resp.status_code, resp.json())
    outcome("GET /readyz without staff login or the metrics token",
            expected="200 {status} only: no hostname, pid, worker names, media path, disk sizes",
            measured="; ".join(f"{who}: {code} {json.dumps(body)}" for who, (code, body) in answers.items()))
    for who, (code, body) in answers.items():
        assert code == 200 and body == {"status": "ready"}, (who, body)
        text = json.dumps(body)
        assert not any(word in text for word in PRIVATE), (who, text)


def test_readyz_shows_details_to_staff_and_to_the_metrics_token(client, settings, worker, outcome):
    settings.COVER_METRICS_TOKEN = TOKEN
    by_token = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()
    staff = get_user_model().objects.create_user("ops", password="pw-123456789", is_staff=True)
    client.force_login(staff)
    by_staff = client.get("/readyz").json()
    outcome("GET /readyz as staff or with the metrics token", expected="200 with every check's details",
            measured=f"token: checks {sorted(by_token.get('checks', {}))}; staff: checks "
                     f"{sorted(by_staff.get('checks', {}))}")
    for body in (by_token, by_staff):
        assert body["status"] == "ready" and set(body["checks"]) == {"database", "redis", "workers", "disk"}
        assert body["checks"]["workers"]["workers"][0]["name"] == "health-h2-worker"
        assert body["checks"]["disk"]["free_mb"] > 0 and body["checks"]["disk"]["path"]


def test_readyz_unavailable_is_503_with_the_status_only(client, settings):
    settings.COVER_METRICS_TOKEN = ""  # no token configured: nobody gets details by token
    resp = client.get("/readyz", HTTP_AUTHORIZATION="Bearer ")
    assert resp.status_code == 503 and resp.json() == {"status": "unavailable"}


# --------------------------------------------------------------------------------------------
# default limits of new keys
# --------------------------------------------------------------------------------------------
DEFAULTS = {"COVER_KEY_DEFAULT_MAX_CONCURRENT": 2, "COVER_KEY_DEFAULT_JOBS_PER_DAY": 200,
            "COVER_KEY_DEFAULT_MAX_UPLOAD_MB": 20.0, "COVER_KEY_DEFAULT_MAX_SONG_SECONDS": 300.0}


def _limits(key: APIKey) -> tuple:
    return key.max_concurrent_jobs, key.jobs_per_day, key.max_upload_mb, key.max_song_seconds


def test_create_api_key_gives_the_default_limits_and_a_new_key_gets_429(client, settings, song_bytes, ref_bytes,
                                                                        capsys, outcome):
    for name, value in DEFAULTS.items():
        setattr(settings, name, value)
    call_command("create_api_key", "fresh")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    key = APIKey.objects.get_from_key(raw)
    assert _limits(key) == (2, 200, 20.0, 300.0)
    codes = []
    for _ in range(3):
        resp = client.post("/api/v1/cover/jobs", {"song": upload("s.wav", song_bytes),
                                                  "reference_voice": upload("r.wav", ref_bytes)},
                           HTTP_X_API_KEY=raw)
        codes.append(resp.status_code)
    err = resp.json().get("error", {})
    outcome("a new key (create_api_key, defaults) queues more jobs than its default limit",
            expected="429 once max concurrent jobs (COVER_KEY_DEFAULT_MAX_CONCURRENT) are queued",
            measured=f"{codes} with max_concurrent_jobs={key.max_concurrent_jobs}; last: {err.get('code')}")
    assert codes == [201, 201, 429] and err["code"], err
    # explicit limits win over the defaults
    call_command("create_api_key", "custom", "--max-concurrent-jobs", "9", "--jobs-per-day", "10")
    custom = APIKey.objects.get_from_key(capsys.readouterr().out.strip().splitlines()[-1])
    assert _limits(custom) == (9, 10, 20.0, 300.0)


def test_the_admin_add_form_starts_with_the_default_limits_and_staff_change_them(admin_client, settings):
    for name, value in DEFAULTS.items():
        setattr(settings, name, value)
    page = admin_client.get("/admin/covers/apikey/add/").content.decode()
    for field, value in (("max_concurrent_jobs", "2"), ("jobs_per_day", "200"), ("max_upload_mb", "20.0"),
                         ("max_song_seconds", "300.0")):
        assert f'name="{field}" value="{value}"' in page.replace("\n", " ") or \
            _input_value(page, field) == value, (field, _input_value(page, field))
    data = {"name": "partner", "owner": "", "expiry_date_0": "", "expiry_date_1": "", "max_concurrent_jobs": "7",
            "jobs_per_day": "1000", "max_upload_mb": "20", "max_song_seconds": "300"}
    resp = admin_client.post("/admin/covers/apikey/add/", data)
    assert resp.status_code == 302, resp.content[:2000]
    key = APIKey.objects.get(name="partner")
    assert _limits(key) == (7, 1000, 20.0, 300.0)
    resp = admin_client.post(f"/admin/covers/apikey/{key.pk}/change/", {**data, "max_concurrent_jobs": "1"})
    assert resp.status_code == 302
    key.refresh_from_db()
    assert key.max_concurrent_jobs == 1


def _input_value(page: str, field: str) -> str | None:
    import re

    m = re.search(r"<input[^>]*name=\"%s\"[^>]*>" % field, page)
    if not m:
        return None
    v = re.search(r'value="([^"]*)"', m.group(0))
    return v.group(1) if v else ""
