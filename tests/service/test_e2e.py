"""End to end: a real daphne HTTP server and a real `manage.py rqworker cover` process
(subprocesses on free ports), the real pipeline, the test database and a test Redis DB shared
between the processes. Checks the five acceptance rules inherited from the old system, plus
cancel of a running job and recovery from a worker killed mid-job."""
from __future__ import annotations

import asyncio
import io
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
import soundfile as sf

from tests import signals
from tests.processes import Stack, e2e_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["preprocess", "separate", "infer", "mix", "finalize"]
TERMINAL = {"succeeded", "failed", "canceled"}


class EventTap:
    """Subscribes to a Channels group (through channels-redis, as a WebSocket consumer would)."""

    def __init__(self, group: str):
        self.group, self.events, self._stop = group, [], threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "could not subscribe to the channel layer"

    async def _run(self):
        from channels.layers import get_channel_layer
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(self.group, channel)
        self._ready.set()
        while not self._stop.is_set():
            try:
                self.events.append(await asyncio.wait_for(layer.receive(channel), timeout=0.5))
            except asyncio.TimeoutError:
                pass
        await layer.group_discard(self.group, channel)

    def for_job(self, job_id: str) -> list[dict]:
        return [e for e in list(self.events) if e["job_id"] == job_id]

    def close(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def stack(e2e_database, django_db_blocker, tmp_path_factory):
    from django.conf import settings

    import redis as redis_lib

    tmp = tmp_path_factory.mktemp("e2e")
    redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()
    env = e2e_env(tmp)  # refuses to run on a database that is not the test database
    with django_db_blocker.unblock():
        from covers.models import APIKey
        key, raw = APIKey.objects.create_key(name="e2e")
    s = Stack(tmp, env)
    s.key, s.raw, s.prefix = key, raw, key.prefix
    try:
        s.start()
        yield s
    finally:
        s.stop()
        with django_db_blocker.unblock():
            from covers.models import APIKey, CoverJob
            CoverJob.objects.all().delete()
            APIKey.objects.all().delete()
        redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture
def tap(stack):
    from covers.notifications import owner_group
    t = EventTap(owner_group(stack.prefix))
    yield t
    t.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request, stack):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(stack.logs())


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    mix, *_ = signals.song(seconds=3.0)
    long_mix, *_ = signals.song(seconds=30.0)
    return {
        "song": signals.write(d / "song.wav", mix),
        "long": signals.write(d / "long.wav", long_mix),
        "ref": signals.write(d / "ref.wav", signals.reference_voice(seconds=5.0)),
    }


def create(stack, song: Path, ref: Path, **fields) -> dict:
    with open(song, "rb") as s, open(ref, "rb") as r:
        resp = requests.post(stack.base + "/api/v1/cover/jobs", headers={"X-API-Key": stack.raw},
                             files={"song": (song.name, s, "audio/wav"), "reference_voice": (ref.name, r, "audio/wav")},
                             data=fields, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def get(stack, job_id: str, suffix: str = "") -> requests.Response:
    return requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}{suffix}", headers={"X-API-Key": stack.raw},
                        timeout=30)


def wait_for(stack, job_id: str, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = get(stack, job_id).json()
        if predicate(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"timed out; last state: {body}\n{stack.logs()}")


def test_a_job_succeeds_with_stages_in_order_and_a_wav_of_the_song_duration(stack, tap, audio_files):
    t0 = time.monotonic()
    body = create(stack, audio_files["song"], audio_files["ref"], pitch_shift="2")
    job_id = body["job_id"]
    # rule 1: queued|running within 5 s of creation
    first = get(stack, job_id).json()
    assert first["status"] in ("queued", "running") and time.monotonic() - t0 < 5
    final = wait_for(stack, job_id, lambda b: b["status"] in TERMINAL, timeout=180)
    assert final["status"] == "succeeded", final
    # rule 2: the stage order, as published live to the owner's channel group
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(e["status"] == "succeeded" for e in tap.for_job(job_id)):
        time.sleep(0.1)
    events = tap.for_job(job_id)
    stages = [e["stage"] for e in events if e["stage"]]
    seen = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert seen == STAGES, seen
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    assert events[-1]["status"] == "succeeded"
    assert set(final["timings"]) == set(STAGES)
    # rule 3: the result is a decodable WAV of the song's duration
    resp = get(stack, job_id, "/result")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "audio/wav"
    data, sr = sf.read(io.BytesIO(resp.content), always_2d=True)
    song_info = sf.info(str(audio_files["song"]))
    assert sf.info(io.BytesIO(resp.content)).format == "WAV"
    assert abs(len(data) / sr - song_info.duration) < 0.01
    assert set(final["links"]["artifacts"]) == {"vocals", "instrumental", "converted_vocals"}
    for name in final["links"]["artifacts"]:
        stem = get(stack, job_id, f"/artifacts/{name}")
        assert stem.status_code == 200
        sf.read(io.BytesIO(stem.content))


def test_a_job_made_to_fail_ends_failed_with_a_message(stack, audio_files):
    # The "command" separator without COVER_SEPARATE_CMD_TEMPLATE cannot run: the job fails in "separate".
    body = create(stack, audio_files["song"], audio_files["ref"], separator="command")
    final = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, timeout=120)
    assert final["status"] == "failed", final
    assert final["error_message"].strip() and final["error_message"].startswith("separate:")
    assert "Traceback" not in final["error_message"]
    assert get(stack, body["job_id"], "/result").status_code == 409


def test_canceled_jobs_end_canceled_running_and_queued(stack, audio_files):
    from rq.job import Job

    from covers.queue import redis_connection

    running = create(stack, audio_files["long"], audio_files["ref"])
    queued = create(stack, audio_files["song"], audio_files["ref"])  # waits behind the long one
    wait_for(stack, running["job_id"], lambda b: b["status"] == "running" and b["stage"] != "preprocess", 120)
    # queued: canceled at once, never starts
    resp = requests.post(f"{stack.base}/api/v1/cover/jobs/{queued['job_id']}/cancel",
                         headers={"X-API-Key": stack.raw}, timeout=30)
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    # running: canceled, and the worker stops working on it within 5 s
    t0 = time.monotonic()
    resp = requests.post(f"{stack.base}/api/v1/cover/jobs/{running['job_id']}/cancel",
                         headers={"X-API-Key": stack.raw}, timeout=30)
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    rq_job = Job.fetch(running["task_id"], connection=redis_connection())
    while rq_job.get_status(refresh=True) not in ("finished", "failed") and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    stopped_after = time.monotonic() - t0
    assert rq_job.get_status() == "finished" and stopped_after < 5, stopped_after
    for job in (running, queued):
        final = get(stack, job["job_id"]).json()
        assert final["status"] == "canceled" and "result" not in final["links"]
        assert get(stack, job["job_id"], "/result").status_code == 409
    assert get(stack, queued["job_id"]).json()["started_at"] is None


def test_a_killed_worker_does_not_leave_the_job_running(stack, audio_files):
    body = create(stack, audio_files["long"], audio_files["ref"])
    wait_for(stack, body["job_id"], lambda b: b["status"] == "running", 120)
    stack.kill_worker(signal.SIGKILL)
    t0 = time.monotonic()
    stack.start_worker()
    stack.wait_worker_ready()
    final = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, timeout=120)
    assert final["status"] == "failed" and "worker" in final["error_message"], final
    assert time.monotonic() - t0 < 120
