"""API for production clients (issue 7): webhooks, Idempotency-Key, Prefer: wait, metrics/urls,
bring-your-own stems, mix and output options. Real database, real local Redis, a real local HTTP
receiver for webhooks; jobs run in-process on 3 s generated audio."""
from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
import soundfile as sf
from django.test import Client
from django.utils import timezone

from covers import services, webhooks
from covers.models import CoverJob, IdempotencyKey, WebhookDelivery
from inference import registry
from tests import signals
from tests.service.conftest import make_key, upload, wav_bytes

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/v1/cover/jobs"


@registry.register("converter", "test-quiet")
class _Quiet:
    """A converter that halves the vocal: the service tests measure the service, not the voice."""
    name, version = "test-quiet", "0"

    def convert(self, vocal, sr, ref, ref_sr, params, ctx):
        return vocal * np.float32(0.5)


def post(client, raw, headers=None, **fields):
    data = {"reference_voice": fields.pop("ref"), **fields}
    return client.post(JOBS, data, HTTP_X_API_KEY=raw, **{f"HTTP_{k.upper().replace('-', '_')}": v
                                                          for k, v in (headers or {}).items()})


def song_fields(song_bytes, ref_bytes, **extra):
    return {"song": upload("song.wav", song_bytes), "ref": upload("ref.wav", ref_bytes), **extra}


@pytest.fixture
def run_in_process(monkeypatch):
    """Run a created job through covers.jobs here (quality report off: crepe is not under test)."""
    from covers import jobs

    real = jobs.build_pipeline_config
    monkeypatch.setattr(jobs, "build_pipeline_config",
                        lambda job: dataclasses.replace(real(job), quality_report=False))

    def run(job_id):
        assert jobs.run_cover_job(str(job_id), 1) == "succeeded", CoverJob.objects.get(pk=job_id).error_message
        return CoverJob.objects.get(pk=job_id)
    return run


# --- webhooks ------------------------------------------------------------------------------------
class Receiver:
    """A local HTTP server that records each POST and answers the next status in ``statuses``."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.got: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                code = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.got) >= n, self.got
        return self.got


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def webhook_settings(settings):
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = True
    settings.COVER_WEBHOOK_ALLOWED_PORTS = ["*"]  # the local receivers listen on a free port
    settings.COVER_WEBHOOK_RETRY_BASE_SECONDS = 1
    settings.COVER_WEBHOOK_PROGRESS_INTERVAL = 0.5
    return settings


def _wait_rows(n, timeout=10.0, **filters):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(WebhookDelivery.objects.filter(**filters).order_by("created_at", "attempt"))
        if len(rows) >= n:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"{n} delivery rows expected: {list(WebhookDelivery.objects.values())}")


def _run_due_retries():
    """What the cover worker's RQ scheduler + the cover-webhooks queue do, here and now."""
    from rq.registry import ScheduledJobRegistry
    from rq.worker import SimpleWorker

    from covers.queue import redis_connection

    q = webhooks.webhook_queue()
    reg = ScheduledJobRegistry(queue=q)
    deadline = time.monotonic() + 10
    while not reg.get_jobs_to_schedule() and time.monotonic() < deadline:
        time.sleep(0.1)
    for job_id in reg.get_jobs_to_schedule():
        q.enqueue_job(q.fetch_job(job_id))
        reg.remove(job_id)
    SimpleWorker([q], connection=redis_connection()).work(burst=True)


def test_webhook_signed_retried_after_500_and_completed(client, api_key, song_bytes, ref_bytes, receiver,
                                                        webhook_settings):
    key, raw = api_key
    receiver.statuses = [500]
    resp = post(client, raw, **song_fields(song_bytes, ref_bytes, webhook_url=receiver.url,
                                           webhook_events="start,completed"))
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["webhook_url"] == receiver.url and body["webhook_events"] == ["start", "completed"]
    job_id = body["job_id"]
    secret = client.get("/api/v1/cover/webhook-secret", HTTP_X_API_KEY=raw).json()["webhook_secret"]
    assert secret == key.webhook_secret and secret.startswith("whsec_")

    t0 = time.monotonic()
    assert services.cover_job_start(job_id=job_id, attempt=1) is not None
    assert time.monotonic() - t0 < 0.5  # the delivery runs beside, never in the caller
    first = _wait_rows(1, job_id=job_id)[0]
    assert (first.event, first.attempt, first.status_code, first.delivered) == ("start", 1, 500, False)
    assert first.next_retry_at is not None and first.error == "HTTP 500" and first.duration_ms is not None

    _run_due_retries()
    rows = _wait_rows(2, job_id=job_id)
    assert (rows[1].attempt, rows[1].status_code, rows[1].delivered, rows[1].next_retry_at) == (2, 200, True, None)
    assert rows[1].message_id == first.message_id

    (h1, b1), (h2, b2) = receiver.wait_for(2)
    assert h1["Webhook-Id"] == h2["Webhook-Id"] == first.message_id  # one message, two attempts
    for headers, raw_body in ((h1, b1), (h2, b2)):
        assert webhooks.verify(secret, headers, raw_body)
        assert abs(int(headers["Webhook-Timestamp"]) - time.time()) < 30
        assert not webhooks.verify("whsec_" + "A" * 44, headers, raw_body)
    sent = json.loads(b2)
    assert sent["job_id"] == job_id and sent["status"] == "running"
    assert set(sent) == set(client.get(f"{JOBS}/{job_id}", HTTP_X_API_KEY=raw).json())  # the detail JSON

    services.cover_job_progress(job=CoverJob.objects.get(pk=job_id), stage="separate", progress=30, force=True)
    services.cover_job_fail(job_id=job_id, message="boom", attempt=1)
    done = _wait_rows(1, job_id=job_id, event="completed")[0]
    assert done.delivered
    headers, raw_body = receiver.wait_for(3)[2]
    assert json.loads(raw_body)["status"] == "failed" and webhooks.verify(secret, headers, raw_body)
    assert not WebhookDelivery.objects.filter(event="progress").exists()  # not subscribed


def test_progress_webhooks_are_throttled_per_job(api_key, receiver, webhook_settings):
    key, _ = api_key
    job = CoverJob.objects.create(owner=key, status="running", attempt=1, webhook_url=receiver.url,
                                  webhook_events=["progress"])
    for pct in range(10, 60, 10):  # five updates within ~0.1 s
        services.cover_job_progress(job=job, stage="infer", progress=pct, force=True)
    time.sleep(0.6)
    services.cover_job_progress(job=job, stage="infer", progress=70, force=True)
    rows = _wait_rows(2, job=job)
    time.sleep(0.3)
    assert WebhookDelivery.objects.filter(job=job).count() == 2
    assert sorted(json.loads(b)["progress"] for _, b in receiver.got) == [10, 70]


def test_retries_stop_after_the_window(api_key, receiver, webhook_settings):
    key, _ = api_key
    webhook_settings.COVER_WEBHOOK_RETRY_HOURS = 24
    job = CoverJob.objects.create(owner=key, status="running", webhook_url=receiver.url)
    receiver.statuses = [503]
    first_at = time.time() - 24 * 3600 + 0.5  # the first attempt was almost 24 h ago
    assert webhooks.webhook_attempt(str(job.id), "progress", "msg_x", "{}", 9, first_at) == 503
    row = WebhookDelivery.objects.get(job=job)
    assert row.next_retry_at is None and not row.delivered
    assert webhooks.retry_delay(1) == 1 and webhooks.retry_delay(3) == 4


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x", "http://10.1.2.3/",
                                 "http://192.168.0.10/", "http://169.254.169.254/latest/meta-data",
                                 "http://[::1]/", "http://0.0.0.0/", "ftp://example.com/", "file:///etc/passwd",
                                 "http://user:pw@example.com/", "not a url"])
def test_webhook_url_refused(url, settings):
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(webhooks.InvalidParameter) as err:
        webhooks.webhook_check_url(url)
    assert err.value.field == "webhook_url"


def test_ssrf_refused_at_create_and_unknown_events(client, api_key, song_bytes, ref_bytes, settings):
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = False
    _, raw = api_key
    resp = post(client, raw, **song_fields(song_bytes, ref_bytes, webhook_url="http://127.0.0.1/hook"))
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "webhook_url"
    assert "private" in resp.json()["error"]["message"]
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = True
    settings.COVER_WEBHOOK_ALLOWED_PORTS = ["9"]
    resp = post(client, raw, **song_fields(song_bytes, ref_bytes, webhook_url="http://127.0.0.1:9/hook",
                                           webhook_events="start,finished"))
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "webhook_events"
    assert not CoverJob.objects.exists()


def test_webhook_secret_endpoint_needs_a_key(client, api_key, other_key):
    key, raw = api_key
    _, raw2 = other_key
    a = client.get("/api/v1/cover/webhook-secret", HTTP_X_API_KEY=raw).json()["webhook_secret"]
    b = client.get("/api/v1/cover/webhook-secret", HTTP_X_API_KEY=raw2).json()["webhook_secret"]
    assert a != b
    assert webhooks.webhook_secret_rotate(api_key=key) != a
    key.refresh_from_db()
    assert client.get("/api/v1/cover/webhook-secret", HTTP_X_API_KEY=raw).json()["webhook_secret"] == key.webhook_secret
    assert client.get("/api/v1/cover/webhook-secret").status_code == 401


# --- idempotency -----------------------------------------------------------------------------------
def test_idempotency_key_replays_the_same_job(client, api_key, other_key, song_bytes, ref_bytes):
    _, raw = api_key
    _, raw2 = other_key
    h = {"Idempotency-Key": "order-42"}
    r1 = post(client, raw, h, **song_fields(song_bytes, ref_bytes, pitch_shift="2"))
    r2 = post(client, raw, h, **song_fields(song_bytes, ref_bytes, pitch_shift="2"))
    assert r1.status_code == r2.status_code == 201
    assert r1.json() == r2.json() and r2["Idempotent-Replayed"] == "true"
    assert CoverJob.objects.count() == 1
    # other parameters, or other file contents, under the same key: 422
    r3 = post(client, raw, h, **song_fields(song_bytes, ref_bytes, pitch_shift="3"))
    assert r3.status_code == 422 and r3.json()["error"]["code"] == "idempotency_mismatch"
    r4 = post(client, raw, h, **song_fields(song_bytes[:-2] + b"\x01\x02", ref_bytes, pitch_shift="2"))
    assert r4.status_code == 422
    # the same key string belongs to each API key separately
    r5 = post(client, raw2, h, **song_fields(song_bytes, ref_bytes, pitch_shift="2"))
    assert r5.status_code == 201 and r5.json()["job_id"] != r1.json()["job_id"]
    # after 24 h the key is free again
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    r6 = post(client, raw, h, **song_fields(song_bytes, ref_bytes, pitch_shift="3"))
    assert r6.status_code == 201 and CoverJob.objects.count() == 3


def test_concurrent_duplicates_make_one_job(api_key, song_bytes, ref_bytes):
    _, raw = api_key
    results, barrier = [], threading.Barrier(3)

    def one():
        from django.db import connection
        c = Client()
        barrier.wait()
        try:
            results.append(post(c, raw, {"Idempotency-Key": "same"}, **song_fields(song_bytes, ref_bytes)))
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [201] * 3, [r.content for r in results]
    assert len({r.json()["job_id"] for r in results}) == 1
    assert CoverJob.objects.count() == 1


def test_lost_race_on_the_unique_constraint_returns_the_winner(api_key, song_bytes, ref_bytes):
    """The insert itself resolves a race the lookup missed (both requests past the lookup)."""
    from covers.auth import Caller

    key, _ = api_key
    winner = services.cover_job_create(caller=Caller(api_key=key), song=upload("s.wav", song_bytes),
                                       reference_voice=upload("r.wav", ref_bytes), idempotency_key="k",
                                       request_hash="h")
    with pytest.raises(services.IdempotentReplay) as replay:
        services.cover_job_create(caller=Caller(api_key=key), song=upload("s.wav", song_bytes),
                                  reference_voice=upload("r.wav", ref_bytes), idempotency_key="k", request_hash="h")
    assert replay.value.record.job_id == winner.id and CoverJob.objects.count() == 1


# --- Prefer: wait ----------------------------------------------------------------------------------
def test_prefer_wait_holds_a_queued_job_then_answers(client, api_key, song_bytes, ref_bytes):
    _, raw = api_key
    t0 = time.monotonic()
    resp = post(client, raw, {"Prefer": "wait=1"}, **song_fields(song_bytes, ref_bytes))
    took = time.monotonic() - t0
    assert resp.status_code == 201 and resp["Preference-Applied"] == "wait=1"
    assert resp.json()["status"] == "queued" and 1.0 <= took < 3.0
    resp = post(client, raw, {"Prefer": "wait=61"}, **song_fields(song_bytes, ref_bytes))
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "Prefer"
    resp = post(client, raw, {"Prefer": "wait=soon"}, **song_fields(song_bytes, ref_bytes))
    assert resp.status_code == 400
    assert CoverJob.objects.count() == 1


def test_prefer_wait_returns_when_the_job_ends(api_key, song_bytes, ref_bytes):
    from covers.auth import Caller
    from covers.selectors import cover_job_wait

    key, _ = api_key
    job = services.cover_job_create(caller=Caller(api_key=key), song=upload("s.wav", song_bytes),
                                    reference_voice=upload("r.wav", ref_bytes))
    threading.Timer(0.3, lambda: services.cover_job_cancel(job=job)).start()
    t0 = time.monotonic()
    assert cover_job_wait(job_id=job.id, seconds=10, caller=Caller(api_key=key)).status == "canceled"
    assert time.monotonic() - t0 < 2


# --- metrics and urls ----------------------------------------------------------------------------
def test_job_json_carries_metrics_and_urls(client, api_key):
    key, raw = api_key
    now = timezone.now()
    job = CoverJob.objects.create(owner=key, status="succeeded", created_at=now, started_at=now + timedelta(seconds=2),
                                  timings={"preprocess": 1.0, "separate": 2.0, "infer": 3.0, "mix": 1.0,
                                           "finalize": 1.0}, input_info={"song": {"duration": 4.0}},
                                  result=f"covers/x/cover.wav", vocals="covers/x/vocals.wav")
    CoverJob.objects.filter(pk=job.pk).update(started_at=job.created_at + timedelta(seconds=2))
    body = client.get(f"{JOBS}/{job.id}", HTTP_X_API_KEY=raw).json()
    m = body["metrics"]
    assert m["stages"]["infer"] == 3.0 and m["processing_seconds"] == 8.0 and m["song_seconds"] == 4.0
    assert m["real_time_factor"] == 2.0 and m["queue_wait_seconds"] == pytest.approx(2.0)
    u = body["urls"]
    assert u["self"].endswith(f"{JOBS}/{job.id}") and u["cancel"].endswith("/cancel")
    assert u["result"].endswith("/result") and set(u["artifacts"]) == {"vocals"}
    assert u["websocket"] == f"/ws/cover/jobs/{job.id}/"


# --- bring your own stems --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stem_bytes():
    _, vocal, inst, _ = signals.song(3.0, sr=22050)
    return wav_bytes(vocal, 22050), wav_bytes(inst, 22050, fmt="FLAC")


@pytest.mark.parametrize("files,field", [((), "song"), (("song", "vocals"), "vocals"),
                                         (("song", "instrumental"), "instrumental"),
                                         (("instrumental",), "song")])
def test_song_or_vocals_exactly_one(client, api_key, song_bytes, ref_bytes, stem_bytes, files, field):
    _, raw = api_key
    data = {"ref": upload("ref.wav", ref_bytes)}
    blobs = {"song": song_bytes, "vocals": stem_bytes[0], "instrumental": stem_bytes[1]}
    data.update({f: upload(f"{f}.wav", blobs[f]) for f in files})
    resp = post(client, raw, **data)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == field, resp.content


def test_own_stems_skip_separation(client, api_key, ref_bytes, stem_bytes, run_in_process):
    _, raw = api_key
    vocals, inst = stem_bytes
    resp = post(client, raw, vocals=upload("v.wav", vocals), instrumental=upload("i.flac", inst),
                ref=upload("ref.wav", ref_bytes), converter="test-quiet")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["parameters"]["stems"] == "vocals+instrumental" and set(body["inputs"]) == {
        "vocals", "instrumental", "reference_voice"}
    job = run_in_process(body["job_id"])
    assert job.report["stages"]["separate"]["skipped"] is True and job.timings["separate"] < 1.0
    assert job.vocals.name == f"covers/{job.id}/vocals.wav" and job.instrumental.name.endswith("instrumental.flac")
    got = client.get(f"{JOBS}/{job.id}/artifacts/instrumental", HTTP_X_API_KEY=raw)
    assert got.status_code == 200 and got["Content-Type"] == "audio/flac"
    with job.result.open("rb") as fh:
        assert sf.info(fh).duration == pytest.approx(3.0, abs=0.01)


def test_own_vocals_alone(client, api_key, ref_bytes, stem_bytes, run_in_process):
    _, raw = api_key
    resp = post(client, raw, vocals=upload("v.wav", stem_bytes[0]), ref=upload("ref.wav", ref_bytes),
                converter="test-quiet")
    job = run_in_process(resp.json()["job_id"])
    assert job.report["stages"]["separate"]["instrumental"] == "silence"
    with job.instrumental.open("rb") as fh:
        inst, _ = sf.read(fh)
    assert not np.any(inst)


# --- mix and output options --------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("vocal_gain_db", "25"), ("instrumental_gain_db", "-30"),
                                         ("reverb", "1.5"), ("output_format", "ogg"),
                                         ("output_sample_rate", "4000"), ("output_sample_rate", "200000")])
def test_mix_options_validated(client, api_key, song_bytes, ref_bytes, field, value):
    _, raw = api_key
    resp = post(client, raw, **song_fields(song_bytes, ref_bytes, **{field: value}))
    assert resp.status_code == 400 and resp.json()["error"]["field"] == field


@pytest.mark.parametrize("fmt,ctype,rate", [("flac", "audio/flac", 16000), ("mp3", "audio/mpeg", None)])
def test_output_format_and_mix_options(client, api_key, ref_bytes, stem_bytes, run_in_process, fmt, ctype, rate):
    _, raw = api_key
    fields = {"output_format": fmt, "vocal_gain_db": "-6", "instrumental_gain_db": "3", "reverb": "0.3"}
    if rate:
        fields["output_sample_rate"] = str(rate)
    resp = post(client, raw, vocals=upload("v.wav", stem_bytes[0]), instrumental=upload("i.flac", stem_bytes[1]),
                ref=upload("ref.wav", ref_bytes), converter="test-quiet", **fields)
    assert resp.status_code == 201, resp.content
    p = resp.json()["parameters"]
    assert (p["output_format"], p["vocal_gain_db"], p["instrumental_gain_db"], p["reverb"]) == (fmt, -6.0, 3.0, 0.3)
    job = run_in_process(resp.json()["job_id"])
    from covers.jobs import build_pipeline_config
    cfg = build_pipeline_config(job)
    assert (cfg.mix.vocal_gain_db, cfg.mix.instrumental_gain_db, cfg.mix.reverb) == (-6.0, 3.0, 0.3)
    assert job.result.name == f"covers/{job.id}/cover.{fmt}"
    got = client.get(f"{JOBS}/{job.id}/result", HTTP_X_API_KEY=raw)
    assert got.status_code == 200 and got["Content-Type"] == ctype
    assert f'filename="cover-{job.id}.{fmt}"' in got["Content-Disposition"]
    data = b"".join(got.streaming_content)
    import io
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == (rate or 22050) and info.duration == pytest.approx(3.0, abs=0.1)


def test_schema_renders_the_new_fields(client):
    resp = client.get("/api/schema/")
    assert resp.status_code == 200
    text = resp.content.decode()
    for word in ("Idempotency-Key", "Prefer", "webhook_url", "vocals", "output_format", "webhook-secret",
                 "metrics"):
        assert word in text, word


# --- admin ---------------------------------------------------------------------------------------
def test_admin_shows_deliveries_and_rotates_secrets(admin_client, api_key):
    key, _ = api_key
    job = CoverJob.objects.create(owner=key, status="running", webhook_url="https://example.com/hook")
    WebhookDelivery.objects.create(job=job, message_id="msg_1", event="start", attempt=1, url=job.webhook_url,
                                   status_code=500, error="HTTP 500", duration_ms=12,
                                   next_retry_at=timezone.now() + timedelta(seconds=10))
    page = admin_client.get(f"/admin/covers/coverjob/{job.pk}/change/")
    assert page.status_code == 200 and b"msg_1" in page.content and b"HTTP 500" in page.content
    assert admin_client.get("/admin/covers/webhookdelivery/").status_code == 200
    page = admin_client.get(f"/admin/covers/apikey/{key.pk}/change/")
    assert page.status_code == 200 and key.webhook_secret.encode() in page.content
    old = key.webhook_secret
    resp = admin_client.post("/admin/covers/apikey/", {"action": "rotate_webhook_secret",
                                                       "_selected_action": [key.pk]})
    assert resp.status_code == 302
    key.refresh_from_db()
    assert key.webhook_secret != old and key.webhook_secret.startswith("whsec_")
