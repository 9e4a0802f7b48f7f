"""Issue 13, promise: the web process restarted mid-job. A real web server and a real worker
(tests.processes.Stack, whose own start_web/stop_web start and stop the server process the suite
uses) on a Redis of this module's own; the job's infer stage waits for a file the test creates, so
the restart happens while it runs. The job finishes, and a WebSocket client that reconnects to the
new server gets the snapshot (the job still running, in infer), then the live events to the end.
"""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import requests

from tests import signals
from tests.hardening.test_faults import RedisServer
from tests.processes import ROOT, Stack, e2e_env

pytestmark = pytest.mark.e2e

SITECUSTOMIZE = '''
import os
if os.environ.get("COVER_TEST_ENGINES"):
    import time
    from pathlib import Path

    from inference import registry

    @registry.register("converter", "test-wait-flag")
    class WaitForFlag:
        """Returns the vocal unchanged once COVER_TEST_FLAG exists (at most 120 s)."""
        name, version = "test-wait-flag", "0"

        def convert(self, vocal, sr, reference, ref_sr, params, ctx):
            flag, deadline = Path(os.environ["COVER_TEST_FLAG"]), time.monotonic() + 120
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return vocal.mean(axis=0) if vocal.ndim == 2 else vocal
'''


class Socket:
    """A WebSocket client in a thread: every message, then the close code."""

    def __init__(self, url: str, key: str):
        self.url, self.messages, self.close_code, self.error = url, [], None, None
        self._open, self._done = threading.Event(), threading.Event()
        threading.Thread(target=self._run, args=(key,), daemon=True).start()
        assert self._open.wait(30), f"{url}: no handshake"
        assert self.error is None, self.error

    def _run(self, key: str) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        try:
            with connect(self.url, additional_headers={"X-API-Key": key}, proxy=None, open_timeout=20,
                         close_timeout=2, ping_interval=None) as ws:
                self._open.set()
                try:
                    for raw in ws:
                        self.messages.append(json.loads(raw))
                except ConnectionClosed:
                    pass
                self.close_code = ws.close_code
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._open.set()
            self._done.set()

    def wait(self, pred, timeout: float, logs) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in list(self.messages):
                if pred(m):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"{self.url}: no such message in {self.messages} (closed {self.close_code})\n{logs()}")

    def wait_closed(self, timeout: float) -> bool:
        return self._done.wait(timeout)


@pytest.fixture
def stack(e2e_database, django_db_blocker, tmp_path):
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(SITECUSTOMIZE)
    flag = tmp_path / "release-infer"
    env = e2e_env(tmp_path, TEST_REDIS_URL=redis_server.url, COVER_TEST_ENGINES="1", COVER_TEST_FLAG=str(flag),
                  PYTHONPATH=os.pathsep.join([str(plugin), str(ROOT)]), COVER_QUALITY_REPORT="false",
                  COVER_WORKER_WITH_SCHEDULER="false")
    with django_db_blocker.unblock():
        from covers.models import APIKey
        key, raw = APIKey.objects.create_key(name="restart")
    s = Stack(tmp_path, env)
    s.raw, s.flag, s.redis = raw, flag, redis_server
    try:
        s.start_web()
        s.start_worker()
        s.wait_http("/healthz")
        s.wait_worker_ready(connection=redis_server.client())
        yield s
    finally:
        s.stop()
        redis_server.kill()
        with django_db_blocker.unblock():
            from covers.models import APIKey, CoverJob
            CoverJob.objects.all().delete()
            APIKey.objects.all().delete()


def _status(stack, job_id) -> dict:
    return requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}", headers={"X-API-Key": stack.raw},
                        timeout=30).json()


def test_web_process_restarted_mid_job_the_job_finishes_and_a_reconnecting_client_gets_the_snapshot(
        stack, tmp_path, django_db_blocker, outcome):
    mix, *_ = signals.song(seconds=2.0, sr=22050)
    song = signals.write(tmp_path / "song.wav", mix, sr=22050)
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(seconds=4.0, sr=22050), sr=22050)
    with open(song, "rb") as s, open(ref, "rb") as r:
        resp = requests.post(stack.base + "/api/v1/cover/jobs", headers={"X-API-Key": stack.raw},
                             files={"song": ("song.wav", s, "audio/wav"), "reference_voice": ("ref.wav", r, "audio/wav")},
                             data={"converter": "test-wait-flag"}, timeout=60)
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    url = f"ws://127.0.0.1:{stack.port}/ws/cover/jobs/{job_id}/"

    first = Socket(url, stack.raw)
    first.wait(lambda m: m.get("status") == "running" and m.get("stage") == "infer", 90, stack.logs)

    t_stop = time.monotonic()
    exit_code = stack.stop_web()
    assert first.wait_closed(15), "the first client's socket stayed open after the web process stopped"
    with django_db_blocker.unblock():
        from covers.models import CoverJob
        row = CoverJob.objects.get(pk=job_id)
    assert (row.status, row.stage) == ("running", "infer"), (row.status, row.stage)  # the worker carries on

    stack.start_web()
    stack.wait_http("/healthz")
    restart_s = time.monotonic() - t_stop
    second = Socket(url, stack.raw)
    snapshot = second.wait(lambda m: m.get("job_id") == job_id, 30, stack.logs)
    assert snapshot["type"] == "job.update" and snapshot["status"] == "running" and snapshot["stage"] == "infer", snapshot
    listing = Socket(f"ws://127.0.0.1:{stack.port}/ws/cover/jobs/", stack.raw)
    listed = listing.wait(lambda m: m.get("job_id") == job_id, 30, stack.logs)
    assert listed["status"] == "running", listed

    stack.flag.touch()  # the infer stage may finish now
    done = second.wait(lambda m: m.get("status") in ("succeeded", "failed", "canceled"), 120, stack.logs)
    assert second.wait_closed(15) and second.close_code == 1000, second.close_code
    listing.wait(lambda m: m.get("job_id") == job_id and m.get("status") == done["status"], 30, stack.logs)
    final = _status(stack, job_id)
    result = requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}/result", headers={"X-API-Key": stack.raw},
                          timeout=30)
    stages_after = [m.get("stage") for m in second.messages[1:]]
    outcome("web process restarted (SIGTERM, new process on the same port) while a job runs in infer",
            expected="the job finishes; a client reconnecting gets the snapshot (running, infer), then the "
                     "live events to the end",
            measured=f"web exit {exit_code}, back in {restart_s:.1f} s; row stayed running/infer; snapshot "
                     f"{snapshot['status']}/{snapshot['stage']}; then stages {stages_after}; job {final['status']}; "
                     f"result HTTP {result.status_code}")
    assert done["status"] == "succeeded" and final["status"] == "succeeded", final
    assert result.status_code == 200 and result.content[:4] == b"RIFF"
    assert "finalize" in stages_after  # live events reached the reconnected client
