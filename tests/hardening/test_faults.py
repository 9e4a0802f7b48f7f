"""Faults injected for real (issue 6): daphne and `rqworker cover` subprocesses sharing the test
database, on a Redis server of this module's own (AOF, appendfsync always, noeviction), so Redis
can be killed and restarted without touching anyone else's.

The stages that matter are made slow or hung on purpose by two converters registered in the
servers through a ``sitecustomize`` on their PYTHONPATH: ``test-hang`` blocks in native code
(libc sleep through ctypes, as a stuck CUDA call would) and ``test-slow`` does so for a few
seconds, then returns the vocal unchanged. Intervals are short (heartbeat 1 s, dead after 6 s,
reconcile every 2 s, queued grace 2 s, separate limited to 8 s: the infer stage also measures
quality (crepe), too slow on a loaded CPU for a tight limit there) so the suite stays fast."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib
import requests

from tests import signals
from tests.processes import ROOT, Stack, e2e_env, free_port

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "canceled"}
SEPARATE_LIMIT = 8
SLOW_SECONDS = 3

SITECUSTOMIZE = f'''
import os
if os.environ.get("COVER_TEST_ENGINES"):
    from inference import registry

    def _sleep(seconds):
        import ctypes
        ctypes.CDLL(None).sleep(int(seconds))  # native code: the GIL is released, Python never runs

    @registry.register("converter", "test-hang")
    class Hang:
        name, version = "test-hang", "0"

        def convert(self, vocal, sr, reference, ref_sr, params, ctx):
            while True:  # a signal ends libc sleep early; the hang goes on
                _sleep(3600)

    @registry.register("separator", "test-hang")
    class HangingSeparator:
        name, version = "test-hang", "0"

        def separate(self, song, sr, ctx):
            _sleep(3600)
            return song, song

    @registry.register("converter", "test-fill")
    class FillAtMix:
        """Marks its job so that the mix stage first fills the disk (below)."""
        name, version = "test-fill", "0"

        def convert(self, vocal, sr, reference, ref_sr, params, ctx):
            (ctx.workdir / "fill-disk-at-mix").touch()
            return vocal.mean(axis=0) if vocal.ndim == 2 else vocal

    from inference.stages import mix as _mix
    _mix_run = _mix.run

    def _filling_mix(pre, sep, conv, cfg, ctx):
        if (ctx.workdir / "fill-disk-at-mix").exists():
            try:
                with open(ctx.workdir / "filler", "wb") as fh:
                    while True:
                        fh.write(bytes(1 << 16))
                        fh.flush()
            except OSError:
                pass
        return _mix_run(pre, sep, conv, cfg, ctx)

    _mix.run = _filling_mix

    @registry.register("converter", "test-slow")
    class Slow:
        name, version = "test-slow", "0"

        def convert(self, vocal, sr, reference, ref_sr, params, ctx):
            _sleep({SLOW_SECONDS})
            return vocal.mean(axis=0) if vocal.ndim == 2 else vocal
'''


class RedisServer:
    """redis-server on a free port with AOF (appendfsync always), data in ``folder``."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, policy: str = "noeviction") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory", "256mb",
             "--maxmemory-policy", policy, "--protected-mode", "no"],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis_lib.Redis.from_url(self.url, socket_timeout=1).ping():
                    return
            except redis_lib.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def stack(e2e_database, django_db_blocker, tmp_path_factory, redis_server):
    tmp = tmp_path_factory.mktemp("faults")
    plugin = tmp / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp / "tmp").mkdir()
    env = e2e_env(tmp, TEST_REDIS_URL=redis_server.url, COVER_TEST_ENGINES="1",
                  PYTHONPATH=os.pathsep.join([str(plugin), str(ROOT)]), TMPDIR=str(tmp / "tmp"),
                  COVER_QUEUED_GRACE_SECONDS="2", COVER_STAGE_TIMEOUTS=f"separate={SEPARATE_LIMIT}",
                  COVER_WORKER_WITH_SCHEDULER="false")
    with django_db_blocker.unblock():
        from covers.models import APIKey
        key, raw = APIKey.objects.create_key(name="faults")
    s = Stack(tmp, env)
    s.key, s.raw, s.redis = key, raw, redis_server
    try:
        s.start_worker()
        s.daphne = s._spawn([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(s.port),
                             "coverproject.asgi:application"], "daphne.log")
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(s.base + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and s.daphne.poll() is None, s.logs()
            time.sleep(0.2)
        worker_ready(s)
        yield s
    finally:
        s.stop()
        with django_db_blocker.unblock():
            from covers.models import APIKey, CoverJob
            CoverJob.objects.all().delete()
            APIKey.objects.all().delete()


@pytest.fixture(autouse=True)
def _logs_on_failure(request, stack):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(stack.logs())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    mix, *_ = signals.song(seconds=2.0, sr=22050)
    return {"song": signals.write(d / "song.wav", mix, sr=22050),
            "ref": signals.write(d / "ref.wav", signals.reference_voice(seconds=4.0, sr=22050), sr=22050)}


def worker_ready(stack, timeout: float = 60) -> None:
    from rq import Worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.worker.poll() is not None:
            stack.start_worker()  # what the supervisor does
        try:
            if any(w.pid == stack.worker.pid for w in Worker.all(connection=stack.redis.client())):
                return
        except redis_lib.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError("the worker did not register\n" + stack.logs())


def post(stack, files, **fields) -> requests.Response:
    with open(files["song"], "rb") as s, open(files["ref"], "rb") as r:
        return requests.post(stack.base + "/api/v1/cover/jobs", headers={"X-API-Key": stack.raw},
                             files={"song": ("song.wav", s, "audio/wav"), "reference_voice": ("ref.wav", r, "audio/wav")},
                             data=fields, timeout=60)


def create(stack, files, **fields) -> dict:
    resp = post(stack, files, **fields)
    assert resp.status_code == 201, resp.text
    return resp.json()


def get(stack, job_id) -> dict:
    return requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}", headers={"X-API-Key": stack.raw},
                        timeout=30).json()


def wait_for(stack, job_id, predicate, timeout: float, *, key: str | None = None, logs=None) -> dict:
    """The job's status body once ``predicate(body)`` holds. A failed request or an answer other
    than 200 (a server restarting, a database away) is tried again; ``key`` (default the
    stack's), ``logs()`` is added to the timeout message."""
    url, headers = f"{stack.base}/api/v1/cover/jobs/{job_id}", {"X-API-Key": key or stack.raw}
    deadline, body = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, headers=headers, timeout=10)
            if r.status_code == 200:
                body = r.json()
                if predicate(body):
                    return body
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out; last state: {body}" + (f"\n{logs()}" if logs else ""))


def media_files(stack) -> list[str]:
    root = stack.tmp / "media"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def rows(django_db_blocker, **filters) -> list:
    with django_db_blocker.unblock():
        from covers.models import CoverJob
        return list(CoverJob.objects.filter(**filters).values("id", "status", "stage", "error_message", "attempt"))


# --------------------------------------------------------------------------------------------
def temp_uploads(stack) -> list[str]:
    """What is left in the web process's temp folder, but multiprocessing's own ``pymp-*`` folder
    (the socket of the forkserver that probes uploads, inference.audio.probe_isolated)."""
    return [p.name for p in (stack.tmp / "tmp").iterdir() if not p.name.startswith("pymp-")]


def test_redis_down_at_post_is_503_with_no_row_and_no_files(stack, files, django_db_blocker, outcome):
    before_rows, before_files = len(rows(django_db_blocker)), media_files(stack)
    stack.redis.kill()
    try:
        t0 = time.monotonic()
        resp = post(stack, files)
        took = time.monotonic() - t0
    finally:
        stack.redis.start()
    body = resp.json()
    outcome("Redis down at POST", expected="503 JSON, no row, no temp upload files",
            measured=f"{resp.status_code} {body['error']['code']} in {took:.1f} s; rows +"
                     f"{len(rows(django_db_blocker)) - before_rows}, files +{len(media_files(stack)) - len(before_files)}, "
                     f"temp files {len(temp_uploads(stack))}")
    assert resp.status_code == 503 and body["error"]["code"] == "queue_unavailable", body
    assert len(rows(django_db_blocker)) == before_rows
    assert media_files(stack) == before_files
    assert temp_uploads(stack) == []
    worker_ready(stack)
    # and the service serves again
    done = wait_for(stack, create(stack, files, converter="test-slow")["job_id"],
                    lambda b: b["status"] in TERMINAL, 120)
    assert done["status"] == "succeeded", done


def test_a_row_committed_but_never_enqueued_is_enqueued_by_the_reconciler(stack, files, django_db_blocker,
                                                                          settings, monkeypatch, outcome):
    """The web process 'crashes' between the commit and the enqueue: the on-commit enqueue never runs."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from covers import services
    from covers.auth import Caller

    settings.MEDIA_ROOT = stack.tmp / "media"
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, settings.COVER_QUEUE_NAME: {"URL": stack.redis.url}}
    monkeypatch.setattr(services, "_enqueue_after_commit", lambda job: None)
    with django_db_blocker.unblock():
        job = services.cover_job_create(
            caller=Caller(api_key=stack.key), converter="test-slow",
            song=SimpleUploadedFile("s.wav", files["song"].read_bytes()),
            reference_voice=SimpleUploadedFile("r.wav", files["ref"].read_bytes()))
    t0 = time.monotonic()
    final = wait_for(stack, str(job.id), lambda b: b["status"] in TERMINAL, 60)
    took = time.monotonic() - t0
    outcome("crash between DB commit and enqueue", expected="enqueued (or failed) by the reconciler within 60 s",
            measured=f"{final['status']} after {took:.1f} s (attempt {rows(django_db_blocker, id=job.id)[0]['attempt']})")
    assert final["status"] == "succeeded", final
    assert took < 60


def test_redis_killed_and_restarted_after_201_the_job_still_completes(stack, files, outcome):
    body = create(stack, files, converter="test-slow")
    wait_for(stack, body["job_id"], lambda b: b["stage"] == "infer", 60)
    t0 = time.monotonic()
    stack.redis.kill()
    time.sleep(1)
    stack.redis.start()
    final = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, 120)
    took = time.monotonic() - t0
    outcome("Redis SIGKILLed during infer and restarted (AOF)", expected="the job still completes",
            measured=f"{final['status']} {took:.1f} s after the kill")
    assert final["status"] == "succeeded", final
    worker_ready(stack)


def test_a_worker_killed_during_infer_fails_the_job_naming_the_stage(stack, files, outcome):
    body = create(stack, files, converter="test-hang")
    wait_for(stack, body["job_id"], lambda b: b["stage"] == "infer", 60)
    stack.kill_worker(signal.SIGKILL)
    t0 = time.monotonic()
    stack.start_worker()  # the supervisor restarts it; its reconciler finds the dead job
    final = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, 120)
    took = time.monotonic() - t0
    time.sleep(4)  # never flips later
    later = get(stack, body["job_id"])
    outcome("worker SIGKILLed during infer", expected="failed within 120 s, stage named; never flips",
            measured=f"{final['status']} after {took:.1f} s: {final['error_message'][:150]}; 4 s later: {later['status']}")
    assert final["status"] == "failed" and final["error_message"].startswith("infer:"), final
    assert "worker" in final["error_message"]
    assert took < 120
    assert later["status"] == "failed" and later["finished_at"] == final["finished_at"]


def test_a_stage_over_its_limit_fails_timeout_in_stage_even_when_native_code_hangs(stack, files, outcome):
    worker_ready(stack)
    body = create(stack, files, separator="test-hang")
    wait_for(stack, body["job_id"], lambda b: b["stage"] == "separate", 60)
    t0 = time.monotonic()
    final = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, SEPARATE_LIMIT + 60)
    took = time.monotonic() - t0
    code = stack.worker.wait(timeout=30)
    outcome(f"separate hangs in native code (limit {SEPARATE_LIMIT} s)", expected='failed "timeout in separate"',
            measured=f"{final['status']} {took:.1f} s after separate began: {final['error_message']}; "
                     f"worker exit {code}")
    assert final["status"] == "failed" and "timeout in separate" in final["error_message"], final
    assert final["error_message"].startswith("separate:") and final["error_code"] == "timeout"
    assert SEPARATE_LIMIT - 1 < took < SEPARATE_LIMIT + 30
    from covers.worker import STAGE_TIMEOUT_EXIT_CODE
    assert code == STAGE_TIMEOUT_EXIT_CODE
    worker_ready(stack)  # restarted, serving again


def test_sigterm_during_a_job_is_a_warm_shutdown_that_finishes_it(stack, files, outcome):
    worker_ready(stack)
    body = create(stack, files, converter="test-slow")
    wait_for(stack, body["job_id"], lambda b: b["stage"] == "infer", 60)
    t0 = time.monotonic()
    os.kill(stack.worker.pid, signal.SIGTERM)
    code = stack.worker.wait(timeout=60)
    final = get(stack, body["job_id"])
    outcome("SIGTERM to the worker during infer", expected="warm shutdown: the job finishes",
            measured=f"{final['status']}; the worker exited {code} {time.monotonic() - t0:.1f} s after SIGTERM")
    assert final["status"] == "succeeded", final
    assert code == 0
    worker_ready(stack)


def test_a_second_sigterm_is_a_cold_shutdown_retried_once_then_failed_naming_the_stage(stack, files, outcome):
    """Two SIGTERMs interrupt the job (the converter hangs, so every attempt is interrupted): the
    first time it goes back to the queue as attempt 2; the next worker's cold shutdown fails it."""
    job_id = create(stack, files, converter="test-hang")["job_id"]

    def cold_shutdown(attempt: int):
        worker_ready(stack)
        wait_for(stack, job_id, lambda b: b["stage"] == "infer" and b["attempt"] == attempt, 60)
        os.kill(stack.worker.pid, signal.SIGTERM)
        time.sleep(1.5)  # rq ignores a repeated signal within 1 s
        t0 = time.monotonic()
        os.kill(stack.worker.pid, signal.SIGTERM)
        code = stack.worker.wait(timeout=60)
        return t0, code

    t0, code = cold_shutdown(1)
    requeued = wait_for(stack, job_id, lambda b: b["attempt"] == 2, 30)
    t_requeue = time.monotonic() - t0
    assert requeued["status"] in ("queued", "running"), requeued
    assert requeued["retries"] == 1 and "worker shutdown" in requeued["error_message"], requeued
    t0, code2 = cold_shutdown(2)
    final = wait_for(stack, job_id, lambda b: b["status"] in TERMINAL, 30)
    outcome("two SIGTERMs to the worker during infer, twice", expected='retried once; then failed "worker '
            'shutdown", stage named', measured=f"attempt 1: re-queued as attempt 2 {t_requeue:.1f} s after the "
            f"second SIGTERM (worker exit {code}); attempt 2: {final['status']} {time.monotonic() - t0:.1f} s "
            f"after it: {final['error_message']}; retries {final['retries']}")
    assert final["status"] == "failed" and final["error_code"] == "worker_stopped", final
    assert final["error_message"].startswith("infer: worker shutdown"), final
    assert final["attempt"] == 2 and final["retries"] == 1, final
    worker_ready(stack)


def test_disk_full_during_mix_fails_no_space_removes_partial_files_and_keeps_serving(stack, files, outcome):
    work = stack.tmp / "work"
    work.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(work)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the work folder: {mounted.stderr.strip()[:200]}")
    try:
        worker_ready(stack)
        body = create(stack, files, converter="test-fill")
        final = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, 120)
        # the worker records the failure, then removes the job's scratch folder
        deadline = time.monotonic() + 10
        while any(work.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p.name for p in work.iterdir())
        job_media = [f for f in media_files(stack) if body["job_id"] in f]
        after = create(stack, files, converter="test-slow")  # the service keeps serving
        done = wait_for(stack, after["job_id"], lambda b: b["status"] in TERMINAL, 120)
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)
    outcome("disk full during mix (48 MB tmpfs work folder)", expected='failed "no space left"; partial files '
            'removed; keeps serving', measured=f"{final['status']}: {final['error_message']}; work folder left: "
            f"{left or 'empty'}; job files: {[f.split('/')[-1] for f in job_media]}; next job {done['status']}")
    assert final["status"] == "failed" and final["error_message"].startswith("mix:"), final
    assert "no space left" in final["error_message"] and final["error_code"] == "no_space"
    assert left == []
    assert sorted(f.split("/")[-1] for f in job_media) == ["reference_voice.wav", "song.wav"]  # inputs only
    assert done["status"] == "succeeded", done


def test_duplicate_delivery_of_a_job_leaves_one_terminal_state(stack, files, django_db_blocker, outcome):
    """RQ delivers the same cover job twice (the second copy after the first finished, and one
    for a stale attempt): the row keeps its one terminal state and its files."""
    from rq import Queue

    from covers.queue import JOB_FUNC
    body = create(stack, files, converter="test-slow")
    done = wait_for(stack, body["job_id"], lambda b: b["status"] in TERMINAL, 120)
    assert done["status"] == "succeeded", done
    files_before = media_files(stack)
    q = Queue("cover", connection=stack.redis.client())
    dup = q.enqueue_call(func=JOB_FUNC, args=(body["job_id"], 1), timeout=60)
    stale = q.enqueue_call(func=JOB_FUNC, args=(body["job_id"], 0), timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
            j.get_status(refresh=True) in ("finished", "failed") for j in (dup, stale)):
        time.sleep(0.2)
    after = get(stack, body["job_id"])
    outcome("duplicate delivery of a finished job (same and stale attempt)", expected="exactly one terminal state",
            measured=f"{after['status']}, finished_at unchanged: {after['finished_at'] == done['finished_at']}, "
                     f"files unchanged: {media_files(stack) == files_before}")
    assert (after["status"], after["finished_at"]) == ("succeeded", done["finished_at"])
    assert media_files(stack) == files_before
