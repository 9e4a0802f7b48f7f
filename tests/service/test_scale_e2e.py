"""Many workers, many machines, on one machine: the whole service against an S3-compatible
server started here (moto's standalone server) and PostgreSQL, with two `rqworker cover`
processes sharing them - no folder is shared between the web and the workers except through S3.

- A job runs end to end with its inputs, stems and result in the bucket; the result downloads
  through the API; a second cover of the same song with another voice takes its stems from the
  stem cache in the bucket (separate reported cached).
- Two workers drain 6 jobs in parallel: all succeed, each runs exactly once (one attempt, one
  worker), and both workers did work.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests import signals
from tests.processes import ROOT, Stack, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PG_ADMIN = os.environ.get("SCALE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BUCKET = "covers-test"
TERMINAL = {"succeeded", "failed", "canceled"}


def _pg(dbname: str | None = None):
    import psycopg
    url = PG_ADMIN if dbname is None else PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres():
    try:
        admin = _pg()
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN} ({exc})")
    name = f"test_cover_scale_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _manage(env: dict, *argv: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"manage.py {argv} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def cluster(s3, postgres, tmp_path_factory):
    """daphne + two workers on PostgreSQL and S3 (moto); the test Redis DB."""
    import redis as redis_lib
    from django.conf import settings

    endpoint, client = s3
    dbname, db_url = postgres
    tmp = tmp_path_factory.mktemp("scale")
    redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVER_", "DJANGO_", "GPT_SOVITS", "AWS_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "coverproject.settings.test", "DATABASE_URL": db_url,
        "TEST_REDIS_URL": settings.REDIS_URL,
        "COVER_STORAGE_BACKEND": "storages.backends.s3.S3Storage", "AWS_STORAGE_BUCKET_NAME": BUCKET,
        "AWS_S3_ENDPOINT_URL": endpoint, "AWS_S3_REGION_NAME": "us-east-1", "AWS_S3_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        # each process its own local folders: nothing is shared but S3, PostgreSQL and Redis
        "COVER_MEDIA_ROOT": str(tmp / "web-media"), "COVER_WORK_ROOT": str(tmp / "web-work"),
        "COVER_WORKER_HEARTBEAT_SECONDS": "1", "COVER_RECONCILE_INTERVAL_SECONDS": "5",
        "COVER_WORKER_WITH_SCHEDULER": "false", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO",
        "COVER_QUALITY_REPORT": "false",  # crepe + Resemblyzer would double each job's time here
    })
    _manage(env, "migrate", "-v", "0")
    raw = _manage(env, "shell", "-c", "from covers.models import APIKey; "
                                      "print(APIKey.objects.create_key(name='scale')[1])").strip().splitlines()[-1]
    stack = Stack(tmp, env)
    stack.raw = raw
    workers = []
    try:
        # worker 1 is Stack's own; each worker gets its own scratch and (unused) media folder
        stack.start_worker = lambda extra_env=None: Stack.start_worker(
            stack, {"COVER_MEDIA_ROOT": str(tmp / "w1-media"), "COVER_WORK_ROOT": str(tmp / "w1-work")})
        stack.start()
        workers.append(stack.worker)
        second = stack._spawn([sys.executable, "manage.py", "rqworker", "cover"], "worker-b.log",
                              {"COVER_MEDIA_ROOT": str(tmp / "w2-media"), "COVER_WORK_ROOT": str(tmp / "w2-work")})
        workers.append(second)
        stack.worker = second
        stack.wait_worker_ready()
        stack.workers = workers
        stack.s3, stack.db = client, dbname
        yield stack
    finally:
        for w in workers[:-1]:
            if w.poll() is None:
                w.terminate()
        stack.stop()
        redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(autouse=True)
def _logs_on_failure(request, cluster):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(cluster.logs())


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale-audio")
    mix, *_ = signals.song(seconds=3.0)
    return {"song": signals.write(d / "song.wav", mix),
            "ref1": signals.write(d / "ref1.wav", signals.reference_voice(seconds=4.0)),
            "ref2": signals.write(d / "ref2.wav", signals.reference_voice(seconds=4.0, seed=11))}


def create(stack, song: Path, ref: Path) -> str:
    with open(song, "rb") as s, open(ref, "rb") as r:
        resp = requests.post(stack.base + "/api/v1/cover/jobs", headers={"X-API-Key": stack.raw}, timeout=60,
                             files={"song": (song.name, s, "audio/wav"), "reference_voice": (ref.name, r, "audio/wav")})
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def wait_all(stack, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline, done = time.monotonic() + timeout, {}
    while len(done) < len(ids):
        assert time.monotonic() < deadline, f"timed out; done: {list(done)}\n{stack.logs()}"
        for job_id in ids:
            if job_id not in done:
                body = requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}", headers={"X-API-Key": stack.raw},
                                    timeout=30).json()
                if body["status"] in TERMINAL:
                    done[job_id] = body
        time.sleep(0.3)
    return done


def rows(stack, ids) -> dict[str, tuple]:
    with _pg(stack.db) as conn:
        cur = conn.execute("SELECT id::text, attempt, worker_name, result, "
                           "report->'stages'->'separate'->>'cached' FROM covers_coverjob WHERE id::text = ANY(%s)",
                           (list(ids),))
        return {r[0]: r[1:] for r in cur.fetchall()}


def bucket_keys(stack, prefix: str = "") -> dict[str, int]:
    out = {}
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def test_pipeline_on_s3_and_postgres_with_the_stem_cache_in_the_bucket(cluster, audio):
    first = create(cluster, audio["song"], audio["ref1"])
    body = wait_all(cluster, [first], 180)[first]
    assert body["status"] == "succeeded", body
    keys = bucket_keys(cluster, f"covers/{first}/")
    (result_name,) = [r[2] for r in rows(cluster, [first]).values()]
    assert result_name in keys and keys[result_name] > 1000
    assert {f"covers/{first}/song.wav", f"covers/{first}/reference_voice.wav"} <= set(keys)
    download = requests.get(f"{cluster.base}/api/v1/cover/jobs/{first}/result", headers={"X-API-Key": cluster.raw},
                            timeout=60)
    assert download.status_code == 200
    assert download.content == cluster.s3.get_object(Bucket=BUCKET, Key=result_name)["Body"].read()
    info = __import__("soundfile").info(__import__("io").BytesIO(download.content))
    assert abs(info.duration - 3.0) < 0.05
    cached = [k for k in bucket_keys(cluster, "stem-cache/") if k.endswith("/meta.json")]
    assert len(cached) == 1
    # nothing went to a local media folder of any process
    assert not any((cluster.tmp / d / "covers").exists() for d in ("web-media", "w1-media", "w2-media"))

    second = create(cluster, audio["song"], audio["ref2"])  # the same song, another voice
    body2 = wait_all(cluster, [second], 180)[second]
    assert body2["status"] == "succeeded", body2
    assert rows(cluster, [first, second]) and rows(cluster, [second])[second][3] == "true"
    assert rows(cluster, [first])[first][3] is None
    assert body2["timings"]["separate"] < max(0.5, body["timings"]["separate"] / 2)
    assert len([k for k in bucket_keys(cluster, "stem-cache/") if k.endswith("/meta.json")]) == 1


def test_two_workers_drain_six_jobs_each_run_once(cluster, audio):
    ids = [create(cluster, audio["song"], audio["ref1" if i % 2 else "ref2"]) for i in range(6)]
    done = wait_all(cluster, ids, 300)
    assert all(b["status"] == "succeeded" for b in done.values()), {k: b["error_message"] for k, b in done.items()}
    db = rows(cluster, ids)
    assert all(attempt == 1 and worker for attempt, worker, *_ in db.values()), db
    assert len({worker for _, worker, *_ in db.values()}) == 2, "both workers did work"
    # each job started exactly once, on one worker (RQ logs "<queue>: <description>" for every job it takes)
    logs = {p.name: p.read_text(errors="replace") for p in cluster.tmp.glob("worker*.log")}
    assert len(logs) == 2
    starts = {name: re.findall(r": cover: cover job ([0-9a-f-]{36}) attempt", text) for name, text in logs.items()}
    taken = [j for found in starts.values() for j in found if j in ids]
    assert sorted(taken) == sorted(ids), starts
    assert all(any(j in ids for j in found) for found in starts.values()), starts
