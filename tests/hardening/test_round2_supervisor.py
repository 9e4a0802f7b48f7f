"""Issue 13, defect 6: the README's first command (scripts/setup_and_run.sh) runs the worker under
`manage.py supervise_worker`, which restarts a worker that dies. The same command, started the
way the script starts it, against this test run's database and Redis: the worker is killed (as
the OOM killer would), twice, and each time a new worker registers (the stage watchdog's exit,
code 70, is a death like any other to the supervisor); one SIGTERM stops the supervisor and its
worker."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from rq import Worker

from tests.processes import ROOT, e2e_env

pytestmark = [pytest.mark.e2e]


def _workers(conn) -> dict[int, str]:
    return {w.pid: w.name for w in Worker.all(connection=conn)}


def wait_for(pred, timeout: float, what: str, logs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def test_the_setup_script_runs_the_worker_under_the_supervisor():
    script = (ROOT / "scripts" / "setup_and_run.sh").read_text()
    assert re.search(r"manage\.py supervise_worker\b", script), "setup_and_run.sh does not supervise the worker"
    assert not re.search(r"manage\.py rqworker\b", script), "setup_and_run.sh still starts a bare rqworker"


def test_a_dead_worker_is_restarted_by_the_supervisor(e2e_database, django_db_blocker, tmp_path, outcome):
    from covers.queue import redis_connection

    with django_db_blocker.unblock():
        env = e2e_env(tmp_path, COVER_WORKER_WITH_SCHEDULER="false")
    conn = redis_connection()
    log_path = tmp_path / "supervisor.log"
    proc = subprocess.Popen([sys.executable, "manage.py", "supervise_worker", "cover"], cwd=ROOT, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    logs = lambda: log_path.read_text(errors="replace")[-6000:]  # noqa: E731
    seen: list[int] = []  # the workers' pids (each in its own process group, under the supervisor)
    try:
        first = wait_for(lambda: list(_workers(conn)), 60, "the first worker to register", logs)[0]
        seen.append(first)
        os.kill(first, signal.SIGKILL)
        t0 = time.monotonic()
        second = wait_for(lambda: [p for p in _workers(conn) if p != first and p > 0], 60,
                          "a new worker after SIGKILL", logs)[0]
        took_kill = time.monotonic() - t0
        assert f"worker pid {first} was killed by SIGKILL" in logs() and "restarting in 1 s" in logs()
        seen.append(second)
        os.kill(second, signal.SIGKILL)
        third = wait_for(lambda: [p for p in _workers(conn) if p not in (first, second) and p > 0], 60,
                         "a new worker after a second death", logs)[0]
        seen.append(third)
        assert "restarting in 2 s" in logs(), logs()  # a worker dying young waits longer each time
        outcome("the dev stack's worker is killed (setup_and_run.sh runs it under supervise_worker)",
                expected="a new worker registers; the restart is logged",
                measured=f"new worker pid {second} registered {took_kill:.1f} s after SIGKILL of {first}; "
                         f"again after a second death (backoff 2 s): pid {third}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, logs()
        assert "supervisor exiting" in logs()
        wait_for(lambda: not os.path.exists(f"/proc/{third}") or _zombie(third), 15, "the worker to stop", logs)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_worker_does_not_outlive_a_killed_supervisor(e2e_database, django_db_blocker, tmp_path):
    from covers.queue import redis_connection

    with django_db_blocker.unblock():
        env = e2e_env(tmp_path, COVER_WORKER_WITH_SCHEDULER="false")
    conn = redis_connection()
    log_path = tmp_path / "supervisor.log"
    proc = subprocess.Popen([sys.executable, "manage.py", "supervise_worker", "cover"], cwd=ROOT, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    logs = lambda: log_path.read_text(errors="replace")[-6000:]  # noqa: E731
    worker = None
    try:
        worker = wait_for(lambda: list(_workers(conn)), 60, "the worker to register", logs)[0]
        proc.kill()  # SIGKILL: no chance to pass anything on
        proc.wait(timeout=10)
        wait_for(lambda: not os.path.exists(f"/proc/{worker}") or _zombie(worker), 30,
                 "the orphaned worker to stop", logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker and os.path.exists(f"/proc/{worker}") and not _zombie(worker):
            os.kill(worker, signal.SIGKILL)
