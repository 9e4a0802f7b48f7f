"""/healthz, /readyz, /metrics (real database, real local Redis; workers registered in Redis the way
RQ does it), and the quality figures in the job JSON."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Worker
from rq.utils import utcformat

from covers.models import CoverJob
from covers.queue import redis_connection
from tests.service.test_api import make_job

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "s3cret-metrics-token"


@pytest.fixture(autouse=True)
def _metrics_token(settings):
    """/readyz shows its checks' details to the holder of the metrics token (or staff) only."""
    settings.COVER_METRICS_TOKEN = TOKEN


@pytest.fixture
def worker(settings):
    """An RQ worker registered in Redis (birth = a fresh heartbeat) on the cover queue."""
    w = Worker([Queue(settings.COVER_QUEUE_NAME, connection=redis_connection())], connection=redis_connection(),
               name="health-test-worker")
    w.register_birth()
    yield w
    w.register_death()


def test_healthz_answers_without_dependencies(client, settings):
    settings.RQ_QUEUES = {settings.COVER_QUEUE_NAME: {"URL": "redis://127.0.0.1:1/15"}}
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp["Content-Type"] == "application/json"
    assert resp.json()["status"] == "ok"
    assert client.post("/healthz").status_code == 405


def test_ready_with_a_live_worker(client, worker):
    resp = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "redis", "workers", "disk"}
    assert all(c["ok"] for c in body["checks"].values())
    w = body["checks"]["workers"]
    assert w["live"] == 1 and w["workers"][0]["name"] == "health-test-worker" and w["workers"][0]["live"]
    assert body["checks"]["disk"]["free_mb"] > body["checks"]["disk"]["min_free_mb"]


def test_not_ready_without_a_worker(client):
    resp = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert not body["checks"]["workers"]["ok"] and "no live worker" in body["checks"]["workers"]["error"]


def test_not_ready_when_the_worker_stopped_beating_or_died(client, worker, redis_client):
    old = timezone.now() - timedelta(minutes=30)
    redis_connection().hset(worker.key, "last_heartbeat", utcformat(old))
    body = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()
    assert body["checks"]["workers"]["live"] == 0 and body["checks"]["workers"]["registered"] == 1
    worker.heartbeat()
    assert client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    worker.register_death()
    assert client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 503


def test_not_ready_when_suspended(client, worker):
    from rq.suspension import resume, suspend

    suspend(redis_connection())
    try:
        resp = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert resp.status_code == 503 and resp.json()["checks"]["workers"]["suspended"] is True
    finally:
        resume(redis_connection())


def test_503_when_redis_is_unreachable(client, settings, worker):
    settings.RQ_QUEUES = {settings.COVER_QUEUE_NAME: {"URL": "redis://127.0.0.1:1/15"}}
    resp = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert checks["database"]["ok"] and not checks["redis"]["ok"] and checks["redis"]["error"]
    assert not checks["workers"]["ok"]
    assert checks["redis"]["ms"] < 5000   # short connect timeout: a probe never hangs


def test_503_when_the_disk_is_nearly_full(client, settings, worker):
    settings.COVER_MIN_FREE_DISK_MB = 10 ** 12
    resp = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 503
    disk = resp.json()["checks"]["disk"]
    assert not disk["ok"] and "MB free" in disk["error"]


# --- metrics ------------------------------------------------------------------------------------
def test_metrics_off_without_a_configured_token(client, settings):
    settings.COVER_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_metrics_need_the_token(client, settings, header):
    settings.COVER_METRICS_TOKEN = TOKEN
    kw = {} if header is None else {"HTTP_AUTHORIZATION": header}
    resp = client.get("/metrics", **kw)
    assert resp.status_code == 401 and resp["WWW-Authenticate"].startswith("Bearer")


def _families(resp) -> dict:
    return {f.name: f for f in text_string_to_metric_families(resp.content.decode())}


def test_metrics_in_prometheus_format(client, settings, api_key, worker):
    settings.COVER_METRICS_TOKEN = TOKEN
    key, _ = api_key
    now = timezone.now()
    for t in ({"preprocess": 0.2, "separate": 3.0, "infer": 7.0, "mix": 0.4, "finalize": 0.1},
              {"preprocess": 0.3, "separate": 40.0, "infer": 20.0, "mix": 0.6, "finalize": 0.2}):
        make_job(key, status=CoverJob.Status.SUCCEEDED, timings=t, enqueued_at=now,
                 started_at=now + timedelta(seconds=2), finished_at=now + timedelta(seconds=60),
                 quality_warning=t["separate"] > 10)
    make_job(key, status=CoverJob.Status.RUNNING)
    make_job(key, status=CoverJob.Status.FAILED)
    make_job(key)
    Queue(settings.COVER_QUEUE_NAME, connection=redis_connection()).enqueue("os.getpid")

    resp = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/plain")
    fam = _families(resp)
    jobs = {s.labels["status"]: s.value for s in fam["cover_jobs"].samples}
    assert jobs == {"queued": 1, "running": 1, "succeeded": 2, "failed": 1, "canceled": 0}
    assert fam["cover_jobs_running"].samples[0].value == 1
    assert [(s.labels["queue"], s.value) for s in fam["cover_queue_depth"].samples] == [(settings.COVER_QUEUE_NAME, 1)]
    assert fam["cover_workers_live"].samples[0].value == 1 and fam["cover_redis_up"].samples[0].value == 1
    assert fam["cover_jobs_quality_warning"].samples[0].value == 1

    stage = fam["cover_stage_seconds"]
    assert stage.type == "histogram"
    sep = {s.labels.get("le"): s.value for s in stage.samples
           if s.labels["stage"] == "separate" and s.name == "cover_stage_seconds_bucket"}
    assert sep["5.0"] == 1 and sep["30.0"] == 1 and sep["60.0"] == 2 and sep["+Inf"] == 2
    sums = {s.labels["stage"]: s.value for s in stage.samples if s.name == "cover_stage_seconds_sum"}
    assert sums["infer"] == pytest.approx(27.0) and sums["separate"] == pytest.approx(43.0)
    counts = {s.labels["stage"]: s.value for s in stage.samples if s.name == "cover_stage_seconds_count"}
    assert counts == {"preprocess": 2, "separate": 2, "infer": 2, "mix": 2, "finalize": 2}
    wait = {s.name: s.value for s in fam["cover_queue_wait_seconds"].samples if "le" not in s.labels}
    assert wait["cover_queue_wait_seconds_count"] == 2 and wait["cover_queue_wait_seconds_sum"] == pytest.approx(4.0)


def test_metrics_still_answer_with_redis_down(client, settings, api_key):
    settings.COVER_METRICS_TOKEN = TOKEN
    settings.RQ_QUEUES = {settings.COVER_QUEUE_NAME: {"URL": "redis://127.0.0.1:1/15"}}
    make_job(api_key[0])
    resp = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200
    fam = _families(resp)
    assert fam["cover_redis_up"].samples[0].value == 0
    assert {s.labels["status"]: s.value for s in fam["cover_jobs"].samples}["queued"] == 1


# --- quality in the job JSON --------------------------------------------------------------------
def test_worker_stores_quality_and_the_api_shows_it(client, api_key, monkeypatch, tmp_path):
    import inference
    from inference.pipeline import PipelineResult

    from covers.jobs import run_cover_job
    from tests import signals

    quality = {"pitch_accuracy": 0.62, "speaker_similarity": 0.81, "original_similarity": 0.55,
               "quality_warning": True, "octave_shift": 0, "voiced_seconds": 2.5, "median_cents_error": 80.0,
               "notes": ["pitch accuracy 62% is under 85%: the converted vocal strays from the melody"]}

    class FakePipeline:
        def __init__(self, config, **kw):
            self.config = config

        def run(self, song, ref, workdir):
            cover = signals.write(tmp_path / "cover.wav", signals.noise(1.0, 22050), 22050)
            return PipelineResult(workdir=tmp_path, artifacts={"cover": cover},
                                  report={"timings": {"infer": 1.0}, "quality": quality}, quality=quality)

    monkeypatch.setattr(inference, "Pipeline", FakePipeline)
    key, raw = api_key
    job = make_job(key)
    assert client.get(f"/api/v1/cover/jobs/{job.id}", HTTP_X_API_KEY=raw).json()["quality"] is None
    assert run_cover_job(str(job.id), job.attempt) == "succeeded"
    job.refresh_from_db()
    assert job.quality == quality and job.quality_warning is True
    body = client.get(f"/api/v1/cover/jobs/{job.id}", HTTP_X_API_KEY=raw).json()
    assert body["quality"] == quality and body["quality_warning"] is True
    listed = client.get("/api/v1/cover/jobs", HTTP_X_API_KEY=raw).json()["results"][0]
    assert listed["quality"]["pitch_accuracy"] == 0.62


def test_a_worker_on_any_device_queue_counts(client, settings):
    settings.COVER_QUEUES = ["cover-gpu", settings.COVER_QUEUE_NAME]
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, "cover-gpu": dict(settings.RQ_QUEUES[settings.COVER_QUEUE_NAME])}
    w = Worker([Queue("cover-gpu", connection=redis_connection())], connection=redis_connection(), name="gpu-1")
    w.register_birth()
    try:
        body = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()
        assert body["status"] == "ready" and body["checks"]["workers"]["workers"][0]["queues"] == ["cover-gpu"]
        settings.COVER_METRICS_TOKEN = TOKEN
        Queue("cover-gpu", connection=redis_connection()).enqueue("os.getpid")
        fam = _families(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
        depth = {s.labels["queue"]: s.value for s in fam["cover_queue_depth"].samples}
        assert depth == {"cover-gpu": 1, settings.COVER_QUEUE_NAME: 0}
    finally:
        w.register_death()


def test_quality_report_setting_reaches_the_pipeline_config(settings, api_key):
    from covers.jobs import build_pipeline_config

    job = make_job(api_key[0])
    assert build_pipeline_config(job).quality_report is True
    settings.COVER_QUALITY_REPORT = False
    assert build_pipeline_config(job).quality_report is False
