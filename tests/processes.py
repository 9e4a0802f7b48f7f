"""Real server processes for end-to-end tests: daphne and `manage.py rqworker cover` as
subprocesses on a free port, sharing the test database and a test Redis DB (used by
tests/service/test_e2e.py and tests/web/test_browser_e2e.py)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def database_url(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    auth = settings_dict.get("USER") or ""
    if settings_dict.get("PASSWORD"):
        auth += f":{settings_dict['PASSWORD']}"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{'@' if auth else ''}{host}:{port}/{settings_dict['NAME']}"


class Stack:
    """daphne + one worker, with logs in a folder (printed when a test fails)."""

    def __init__(self, tmp: Path, env: dict):
        self.tmp, self.env = tmp, env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.daphne = self.worker = None
        self._worker_logs = 0

    def _spawn(self, args: list[str], log_name: str, extra_env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / log_name, "wb")
        return subprocess.Popen(args, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.start_web()
        self.start_worker()
        self.wait_http("/api/schema/")
        self.wait_worker_ready()

    def start_web(self) -> None:
        """The web server process (HTTP + WebSockets) on ``self.port``; again after ``stop_web``
        (a restart: same port, a new log file). Does not wait (``wait_http``)."""
        self._web_logs = getattr(self, "_web_logs", 0) + 1
        self.daphne = self._spawn([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                                   "coverproject.asgi:application"],
                                  "daphne.log" if self._web_logs == 1 else f"daphne{self._web_logs}.log")

    def stop_web(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        """Stops the web server process (its whole process group); returns its exit code."""
        os.killpg(self.daphne.pid, sig)
        try:
            return self.daphne.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.daphne.pid, signal.SIGKILL)
            return self.daphne.wait(timeout=5)

    def wait_http(self, path: str = "/healthz", timeout: float = 60) -> None:
        """Until daphne answers ``path`` with 200 (it must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + path, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.daphne.poll() is None, self.logs()
            time.sleep(0.2)
        raise AssertionError("daphne did not start\n" + self.logs())

    def start_worker(self, extra_env: dict | None = None) -> None:
        self._worker_logs += 1
        self.worker = self._spawn([sys.executable, "manage.py", "rqworker", "cover"],
                                  f"worker{self._worker_logs}.log", extra_env)

    def wait_worker_ready(self, timeout: float = 60, connection=None) -> None:
        """Until the worker has registered in Redis (``connection``: default the tests' own)."""
        from rq import Worker

        from covers.queue import redis_connection
        connection = connection or redis_connection()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.worker.poll() is None, self.logs()
            if any(w.pid == self.worker.pid for w in Worker.all(connection=connection)):
                return
            time.sleep(0.2)
        raise AssertionError("the worker did not register\n" + self.logs())

    def kill_worker(self, sig=signal.SIGKILL) -> None:
        os.killpg(self.worker.pid, sig)
        self.worker.wait(timeout=10)

    def stop(self) -> None:
        for proc in (self.worker, self.daphne):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.worker, self.daphne):
            if proc is None:
                continue
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def logs(self) -> str:
        out = []
        for p in sorted(self.tmp.glob("*.log")):
            out.append(f"----- {p.name} -----\n" + p.read_text(errors="replace")[-6000:])
        return "\n".join(out)


def e2e_env(tmp: Path, **extra: str) -> dict:
    """Environment for the subprocesses: test settings, this test run's database and Redis DB,
    media under ``tmp``, short worker heartbeat/reconcile intervals."""
    from django.conf import settings
    from django.db import connection

    if not is_test_database():
        raise RuntimeError(f"refusing to start servers on {connection.settings_dict['NAME']!r}, not the test "
                           f"database (use the e2e_database fixture)")
    return server_env(tmp, database_url(connection.settings_dict), settings.REDIS_URL, **extra)


def server_env(tmp: Path, database_url: str, redis_url: str, **extra: str) -> dict:
    """Environment for server subprocesses on ``database_url`` and the Redis at ``redis_url``:
    test settings, media and work folders under ``tmp``, short worker heartbeat/reconcile
    intervals; nothing of this process's COVER_/DJANGO_/GPT_SOVITS/DATABASE_ settings leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COVER_", "DJANGO_", "GPT_SOVITS", "DATABASE_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "coverproject.settings.test", "DATABASE_URL": database_url,
        "TEST_REDIS_URL": redis_url,
        "COVER_MEDIA_ROOT": str(tmp / "media"), "COVER_WORK_ROOT": str(tmp / "work"),
        "COVER_WORKER_HEARTBEAT_SECONDS": "1", "COVER_RECONCILE_INTERVAL_SECONDS": "2",
        "COVER_WORKER_DEAD_AFTER_SECONDS": "6", "COVER_CANCEL_POLL_SECONDS": "0.2",
        "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO",
    })
    env.update(extra)
    return env


def is_test_database() -> bool:
    from django.db import connection

    test_name = (connection.settings_dict.get("TEST") or {}).get("NAME")
    return bool(test_name) and connection.settings_dict["NAME"] == test_name


@contextlib.contextmanager
def ensure_test_database(django_db_blocker):
    """The test database, created here when pytest-django has not: it sets one up only when a
    collected test uses the database, and an end-to-end module run alone has none - its servers
    would then use (and its cleanup empty) the real database."""
    if is_test_database():
        yield
        return
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    try:
        yield
    finally:
        with django_db_blocker.unblock():
            teardown_databases(config, verbosity=0)
