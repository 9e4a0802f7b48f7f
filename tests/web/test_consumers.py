"""WebSocket consumers through the real ASGI application (origin check, session and caller
middleware, URL routing) with channels' WebsocketCommunicator and an in-memory channel layer.

Tests are sync functions that run their coroutine with async_to_sync, so the consumers' database
calls (thread-sensitive) run on the test's thread and connection."""
from __future__ import annotations

import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core import signing

from tests.web.conftest import make_job, make_key

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
STAGES = ["preprocess", "separate", "infer", "mix", "finalize"]


def app():
    from coverproject.asgi import application

    return application


def communicator(path: str, raw_key: str | None = None, headers=(ORIGIN,)) -> WebsocketCommunicator:
    hdrs = list(headers)
    if raw_key:
        hdrs.append((b"x-api-key", raw_key.encode()))
    return WebsocketCommunicator(app(), path, headers=hdrs)


def run(coro_fn):
    async_to_sync(coro_fn)()


async def expect_close(comm: WebsocketCommunicator, code: int) -> None:
    out = await comm.receive_output(timeout=3)
    assert out["type"] == "websocket.close", out
    assert out.get("code") == code, out


async def connected(comm: WebsocketCommunicator) -> None:
    ok, code = await comm.connect(timeout=3)
    assert ok, code


@pytest.fixture
def key(db):
    return make_key("primary")


@pytest.fixture
def other(db):
    return make_key("other")


# --------------------------------------------------------------------------------------------
# one job
# --------------------------------------------------------------------------------------------
def test_snapshot_first_then_updates_in_order_then_normal_close(memory_layer, key):
    from covers import services
    from covers.models import CoverJob

    obj, raw = key
    job = make_job(owner=obj)

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw)
        await connected(comm)
        snap = await comm.receive_json_from(timeout=3)
        assert snap["type"] == "job.update" and snap["job_id"] == str(job.id)
        assert (snap["status"], snap["stage"], snap["progress"]) == ("queued", None, 0)
        assert set(snap) == {"type", "job_id", "status", "stage", "progress", "error_message", "ts"}

        running = await database_sync_to_async(services.cover_job_start)(job_id=job.id, attempt=1)
        for i, stage in enumerate(STAGES):
            await database_sync_to_async(services.cover_job_progress)(
                job=running, stage=stage, progress=i * 20 + 5, force=True)
        await database_sync_to_async(services.cover_job_transition)(
            job_id=job.id, to=CoverJob.Status.SUCCEEDED, attempt=1)

        got = [await comm.receive_json_from(timeout=3) for _ in range(7)]
        assert [(e["status"], e["stage"], e["progress"]) for e in got] == (
            [("running", "preprocess", 0)] + [("running", s, i * 20 + 5) for i, s in enumerate(STAGES)]
            + [("succeeded", "finalize", 100)])
        await expect_close(comm, 1000)

    run(body)


def test_a_finished_job_sends_its_snapshot_and_closes_normally(memory_layer, key):
    obj, raw = key
    job = make_job(owner=obj, status="failed", stage="separate", progress=30,
                   error_message="separate: the separator crashed")

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw)
        await connected(comm)
        snap = await comm.receive_json_from(timeout=3)
        assert (snap["status"], snap["stage"], snap["error_message"]) == (
            "failed", "separate", "separate: the separator crashed")
        await expect_close(comm, 1000)

    run(body)


def test_stale_and_repeated_events_are_not_sent(memory_layer, key):
    """Events queued while the snapshot was read may be older than it: never go backwards."""
    from covers.notifications import job_group

    obj, raw = key
    job = make_job(owner=obj, status="running", stage="infer", progress=50)

    def ev(status, stage, progress):
        return {"type": "job.update", "job_id": str(job.id), "status": status, "stage": stage,
                "progress": progress, "error_message": "", "ts": "2026-01-01T00:00:00+00:00"}

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw)
        await connected(comm)
        assert (await comm.receive_json_from())["progress"] == 50
        group = job_group(job.id)
        for e in (ev("running", "separate", 40), ev("running", "infer", 50), ev("queued", None, 0),
                  ev("running", "infer", 60), ev("running", "mix", 60), ev("canceled", "mix", 60),
                  ev("running", "finalize", 95)):
            await memory_layer.group_send(group, e)
        got = [await comm.receive_json_from(timeout=3) for _ in range(3)]
        assert [(e["status"], e["stage"], e["progress"]) for e in got] == [
            ("running", "infer", 60), ("running", "mix", 60), ("canceled", "mix", 60)]
        await expect_close(comm, 1000)

    run(body)


def test_progress_is_throttled_but_every_stage_arrives(memory_layer, key, settings):
    from covers import services
    from covers.models import CoverJob

    settings.COVER_PROGRESS_MIN_INTERVAL = 0.2
    obj, raw = key
    job = make_job(owner=obj)

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw)
        await connected(comm)
        await comm.receive_json_from()
        running = await database_sync_to_async(services.cover_job_start)(job_id=job.id, attempt=1)
        t0 = time.monotonic()
        for i, stage in enumerate(STAGES):
            for k in range(40):  # 200 progress reports, as fast as possible
                await database_sync_to_async(services.cover_job_progress)(
                    job=running, stage=stage, progress=i * 20 + k * 0.5)
        elapsed = time.monotonic() - t0
        await database_sync_to_async(services.cover_job_transition)(
            job_id=job.id, to=CoverJob.Status.SUCCEEDED, attempt=1)
        got = []
        while True:
            e = await comm.receive_json_from(timeout=3)
            got.append(e)
            if e["status"] == "succeeded":
                break
        await expect_close(comm, 1000)
        progress_events = [e for e in got if e["status"] == "running"]
        stages = [e["stage"] for e in progress_events]
        assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == STAGES
        # at most one per interval per stage run, plus one per stage change and the start
        assert len(progress_events) <= 1 + len(STAGES) + elapsed / 0.2 + 1, (len(progress_events), elapsed)
        assert len(progress_events) < 100

    run(body)


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("credentials", ["none", "bad key", "revoked key", "bad token"])
def test_no_valid_credentials_closes_4401(memory_layer, key, credentials):
    obj, raw = key
    job = make_job(owner=obj)
    query, raw_key = "", None
    if credentials == "bad key":
        raw_key = raw[:-2] + ("aa" if not raw.endswith("aa") else "bb")
    elif credentials == "revoked key":
        revoked, raw_key = make_key("revoked", revoked=True)
    elif credentials == "bad token":
        query = "?token=k:" + obj.prefix + ":1vXyZ:forged"

    async def body():
        for path in (f"/ws/cover/jobs/{job.id}/{query}", f"/ws/cover/jobs/{query}"):
            comm = communicator(path, raw_key)
            await connected(comm)
            await expect_close(comm, 4401)

    run(body)


def test_another_keys_job_and_an_unknown_job_close_4404(memory_layer, key, other):
    obj, raw = key
    theirs = make_job(owner=other[0])

    async def body():
        comm = communicator(f"/ws/cover/jobs/{theirs.id}/", raw)
        await connected(comm)
        await expect_close(comm, 4404)
        for job_id in (uuid.uuid4(), "not-a-uuid"):
            comm = communicator(f"/ws/cover/jobs/{job_id}/", raw)
            await connected(comm)
            await expect_close(comm, 4404)

    run(body)


def test_foreign_origin_is_refused_and_no_origin_is_allowed_for_key_clients(memory_layer, key):
    obj, raw = key
    job = make_job(owner=obj)

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw, headers=[(b"origin", b"http://evil.example")])
        ok, _ = await comm.connect(timeout=3)
        assert not ok
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw, headers=[])  # a script, not a browser
        await connected(comm)
        assert (await comm.receive_json_from())["job_id"] == str(job.id)
        await comm.disconnect()

    run(body)


# --------------------------------------------------------------------------------------------
# signed tokens and sessions
# --------------------------------------------------------------------------------------------
def test_token_from_the_api_opens_the_socket_and_an_expired_one_closes_4401(memory_layer, key, client,
                                                                           monkeypatch):
    obj, raw = key
    job = make_job(owner=obj)
    resp = client.post("/api/v1/cover/ws-token", HTTP_X_API_KEY=raw)
    assert resp.status_code == 200, resp.content
    token = resp.json()["token"]
    assert raw not in token and resp.json()["expires_in"] == 300
    assert client.post("/api/v1/cover/ws-token").status_code == 401

    real_time = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real_time() - 301)
    resp = client.post("/api/v1/cover/ws-token", HTTP_X_API_KEY=raw)
    monkeypatch.setattr(signing.time, "time", real_time)
    expired = resp.json()["token"]

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/?token={token}")
        await connected(comm)
        assert (await comm.receive_json_from())["job_id"] == str(job.id)
        await comm.disconnect()
        comm = communicator(f"/ws/cover/jobs/{job.id}/?token={expired}")
        await connected(comm)
        await expect_close(comm, 4401)

    run(body)


def _session_cookie(client, user) -> tuple[bytes, bytes]:
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def test_session_user_follows_own_jobs_and_keys_jobs_and_nobody_elses(memory_layer, client,
                                                                      django_user_model, other):
    from covers import services

    user = django_user_model.objects.create_user("ana", password="pw-123456789")
    own_key, _ = make_key("ana's", owner=user)
    by_session = make_job(user=user)
    by_key = make_job(owner=own_key)
    theirs = make_job(owner=other[0])
    cookie = _session_cookie(client, user)

    async def body():
        comm = communicator("/ws/cover/jobs/", headers=[ORIGIN, cookie])
        await connected(comm)
        snap = [await comm.receive_json_from() for _ in range(2)]
        assert [e["job_id"] for e in snap] == [str(by_session.id), str(by_key.id)]  # oldest first
        # live: changes of the user's jobs (theirs is not among them), new jobs included
        await database_sync_to_async(services.cover_job_start)(job_id=theirs.id, attempt=1)
        await database_sync_to_async(services.cover_job_start)(job_id=by_key.id, attempt=1)
        fresh = await database_sync_to_async(make_job)(user=user)
        await database_sync_to_async(services.cover_job_start)(job_id=fresh.id, attempt=1)
        got = [await comm.receive_json_from(timeout=3) for _ in range(2)]
        assert [(e["job_id"], e["status"]) for e in got] == [(str(by_key.id), "running"),
                                                             (str(fresh.id), "running")]
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

        comm = communicator(f"/ws/cover/jobs/{theirs.id}/", headers=[ORIGIN, cookie])
        await connected(comm)
        await expect_close(comm, 4404)

    run(body)


def test_session_user_without_key_or_staff_is_refused(memory_layer, client, django_user_model):
    user = django_user_model.objects.create_user("bob", password="pw-123456789")
    job = make_job(user=user)
    cookie = _session_cookie(client, user)

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", headers=[ORIGIN, cookie])
        await connected(comm)
        await expect_close(comm, 4401)

    run(body)


def test_key_list_socket_gets_only_that_keys_jobs(memory_layer, key, other):
    from covers import services

    obj, raw = key
    mine = make_job(owner=obj)
    theirs = make_job(owner=other[0])

    async def body():
        comm = communicator("/ws/cover/jobs/", raw)
        await connected(comm)
        assert [(await comm.receive_json_from())["job_id"]] == [str(mine.id)]
        await database_sync_to_async(services.cover_job_start)(job_id=theirs.id, attempt=1)
        await database_sync_to_async(services.cover_job_start)(job_id=mine.id, attempt=1)
        e = await comm.receive_json_from(timeout=3)
        assert (e["job_id"], e["status"]) == (str(mine.id), "running")
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    run(body)


# --------------------------------------------------------------------------------------------
# the real channels-redis layer
# --------------------------------------------------------------------------------------------
def test_an_idle_socket_on_channels_redis_outlives_redis_py_read_timeout(key, settings):
    """redis-py 8 reads with a 5 s socket timeout by default: without ``socket_timeout: None`` in
    the channel layer's host options, a consumer waiting 5 s for an event crashed (close 1011)."""
    from channels.layers import get_channel_layer

    from covers import services

    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}  # a fresh layer object for this loop
    assert "RedisChannelLayer" in settings.CHANNEL_LAYERS["default"]["BACKEND"]
    obj, raw = key
    job = make_job(owner=obj)

    async def body():
        comm = communicator(f"/ws/cover/jobs/{job.id}/", raw)
        await connected(comm)
        assert (await comm.receive_json_from(timeout=10))["status"] == "queued"
        assert await comm.receive_nothing(timeout=6.5, interval=0.5)
        await database_sync_to_async(services.cover_job_start)(job_id=job.id, attempt=1)
        assert (await comm.receive_json_from(timeout=10))["status"] == "running"
        await comm.disconnect()
        await get_channel_layer().close_pools()

    run(body)
