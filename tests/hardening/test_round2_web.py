"""Hardening round 2 (issue 13), the web side, against real servers: ``manage.py serve`` (uvicorn,
what scripts/setup_and_run.sh runs) and plain ``daphne coverproject.asgi:application``, both on the
test database and channels-redis; plus the same rules in this process with DEBUG on.

- A key revoked (the admin's service), expired by time or deleted, a user deactivated or logged
  out: that principal's open WebSockets (``X-API-Key``, ``?token=``, session) close with 4401
  within seconds, and no job event sent after the revoke reaches them.
- The body limit acts before the body is read: a declared 300 MB gets 413 at once with nothing
  written to disk; a chunked body is cut off at the limit.
- Too many form parts: 400 naming the limit, no traceback logged.
- A WebSocket handshake to an unrouted path: closed 4404, no error logged.
- API paths answer JSON errors whatever DEBUG is; a bad Host gets a short 400; a request head
  over 16 kB gets 431.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.test import Client, override_settings
from django.urls import path as url_path

from tests.processes import ROOT, e2e_env, free_port

pytestmark = [pytest.mark.e2e]

MAX_UPLOAD_MB = 1  # the request limit in the servers: 2 x 1 MB + 1 MB = 3 MB
LIMIT = 3 * 1024 * 1024
RECHECK_S = 5.0  # COVER_WS_RECHECK_SECONDS' default; the servers run with it


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------
class Server:
    def __init__(self, kind: str, tmp: Path, env: dict):
        self.kind, self.tmp, self.port = kind, tmp, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{kind}.log"
        if kind == "serve":
            cmd = [sys.executable, "manage.py", "serve", "--port", str(self.port), "--processes", "1"]
        else:
            cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                   "coverproject.asgi:application"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.log_path, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs()
            try:
                if requests.get(self.base + "/healthz", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.kind} did not start\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def servers(e2e_database, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("round2")
    (tmp / "spool").mkdir()
    with django_db_blocker.unblock():
        env = e2e_env(tmp, COVER_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB), TMPDIR=str(tmp / "spool"))
    started = {kind: Server(kind, tmp, env) for kind in ("serve", "daphne")}
    try:
        for s in started.values():
            s.wait_up()
        yield started
    finally:
        for s in started.values():
            s.stop()
        with django_db_blocker.unblock():
            from django.contrib.auth import get_user_model

            from covers.models import APIKey, CoverJob
            CoverJob.objects.all().delete()
            APIKey.objects.all().delete()
            get_user_model().objects.all().delete()


@pytest.fixture
def serve(servers):
    return servers["serve"]


@pytest.fixture
def db_on(django_db_blocker):
    """The test database in autocommit (what the servers see, and on_commit runs at once)."""
    with django_db_blocker.unblock():
        yield


# --------------------------------------------------------------------------------------------
# WebSocket client in a thread of its own (the test thread does the database work)
# --------------------------------------------------------------------------------------------
class Watcher:
    """One WebSocket: every message with its arrival time, and the close code and time."""

    def __init__(self, url: str, headers: dict | None = None):
        self.url = url
        self.messages: list[tuple[float, dict]] = []
        self.close_code = None
        self.closed_at = None
        self.error = None
        self._open, self._done = threading.Event(), threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._run(headers or {})), daemon=True).start()
        assert self._open.wait(20), f"{url}: no handshake"
        assert self.error is None, self.error

    async def _run(self, headers: dict) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        try:
            async with connect(self.url, additional_headers=headers, proxy=None, open_timeout=15,
                               close_timeout=2, ping_interval=None) as ws:
                self._open.set()
                try:
                    async for raw in ws:
                        self.messages.append((time.monotonic(), json.loads(raw)))
                except ConnectionClosed:
                    pass
                self.close_code = ws.close_code
        except Exception as exc:  # the handshake refused
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.closed_at = time.monotonic()
            self._open.set()
            self._done.set()

    def wait_closed(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def wait_message(self, pred, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, m in list(self.messages):
                if pred(m):
                    return m
            time.sleep(0.02)
        raise AssertionError(f"{self.url}: no such message in {self.messages} (closed {self.close_code})")

    def job_events_after(self, t: float) -> list[dict]:
        return [m for at, m in self.messages if at > t and m.get("type") == "job.update"]


def _job(owner=None, user=None):
    from covers.models import CoverJob

    return CoverJob.objects.create(owner=owner, user=user, status="running", stage="separate", progress=1,
                                   song="covers/x/song.wav", reference_voice="covers/x/ref.wav")


class EventPump:
    """Sends a job.update (progress 2, 3, ...) every ``every`` s through covers.notifications,
    remembering when each progress value was sent."""

    def __init__(self, job, every: float = 0.1):
        self.job, self.every, self.sent = job, every, {}
        self._stop = threading.Event()

    def send_one(self) -> int:
        from covers import notifications
        from covers.models import CoverJob

        p = int(self.job.progress) + 1
        CoverJob.objects.filter(pk=self.job.pk).update(progress=p)
        self.job.progress = p
        self.sent[p] = time.monotonic()
        notifications.notify_job_changed(self.job)
        return p

    def run_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            self.send_one()
            time.sleep(self.every)

    def sent_after(self, t: float) -> set[int]:
        return {p for p, at in self.sent.items() if at >= t}


def _revoke_flow(server, outcome, *, how: str, revoke, headers_for, minimum_s: float = 0.0, within_s: float):
    """Open the list socket and a job socket, check an event arrives, ``revoke()``, keep sending
    events; both sockets must close 4401 within ``within_s`` with no event sent after the revoke."""
    key_job, urls_and_headers = headers_for()
    socks = [Watcher(server.ws + path, headers) for path, headers in urls_and_headers(key_job)]
    for w in socks:
        w.wait_message(lambda m: m.get("job_id") == str(key_job.id))  # the snapshot
    pump = EventPump(key_job)
    p = pump.send_one()
    for w in socks:
        w.wait_message(lambda m, p=p: m.get("progress") == p)  # live events reach both sockets
    t0 = time.monotonic()
    revoke()
    t_revoked = time.monotonic()
    pump.run_until(lambda: all(w._done.is_set() for w in socks), timeout=within_s + 3)
    for w in socks:
        w.wait_closed(5)
    after = pump.sent_after(t_revoked)
    late = {("job" if str(key_job.id) in w.url else "list"):
            sorted(m["progress"] for m in w.job_events_after(0) if m["progress"] in after) for w in socks}
    took = [round(w.closed_at - t0, 2) if w.closed_at else None for w in socks]
    outcome(f"WebSocket of a principal that loses access: {how} ({server.kind})",
            expected=f"both sockets (list, one job) close 4401 within {within_s:g} s; no job event sent after it",
            measured=f"close codes {[w.close_code for w in socks]} after {took} s; events after it: {late}; "
                     f"{len(pump.sent)} events sent")
    assert [w.close_code for w in socks] == [4401] * len(socks), (socks[0].messages, server.logs()[-3000:])
    assert all(t is not None and minimum_s <= t <= within_s for t in took), took
    assert all(not v for v in late.values()), late


def _key_sockets(via: str):
    def make():
        from covers.models import APIKey
        from covers.ws_auth import ws_token_issue
        from covers.auth import Caller

        key, raw = APIKey.objects.create_key(name=f"ws-{via}")
        job = _job(owner=key)
        if via == "header":
            hdr = {"X-API-Key": raw}
            urls = lambda j: [("/ws/cover/jobs/", hdr), (f"/ws/cover/jobs/{j.id}/", hdr)]  # noqa: E731
        else:
            token = ws_token_issue(caller=Caller(api_key=key, user=None))
            urls = lambda j: [(f"/ws/cover/jobs/?token={token}", {}),  # noqa: E731
                              (f"/ws/cover/jobs/{j.id}/?token={token}", {})]
        make.key = key
        return job, urls
    return make


# --------------------------------------------------------------------------------------------
# defect 1: sockets of a principal that loses access
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["serve", "daphne"])
@pytest.mark.parametrize("via", ["header", "token"])
def test_revoking_a_key_in_the_admin_closes_its_sockets_4401_and_sends_nothing_after(servers, db_on, outcome,
                                                                                     kind, via):
    from covers.models import APIKey
    from covers.principals import api_keys_revoke

    make = _key_sockets(via)
    _revoke_flow(servers[kind], outcome, how=f"key revoked in the admin (X-API-Key {via})" if via == "header"
                 else "key revoked in the admin (?token= of the key)",
                 revoke=lambda: api_keys_revoke(keys=APIKey.objects.filter(pk=make.key.pk)),
                 headers_for=make, within_s=3.0)


def test_the_admin_revoke_action_calls_the_revoking_service(db_on, monkeypatch):
    """The admin's "Revoke the selected keys" action goes through covers.principals (its sockets close)."""
    from django.contrib.admin.sites import site

    from covers import principals
    from covers.models import APIKey

    key, _ = APIKey.objects.create_key(name="admin-action")
    calls = []
    real = principals.api_keys_revoke
    monkeypatch.setattr(principals, "api_keys_revoke", lambda *, keys: calls.append(keys) or real(keys=keys))
    admin = site._registry[APIKey]
    admin.message_user = lambda *a, **k: None
    admin.revoke_keys(None, APIKey.objects.filter(pk=key.pk))
    assert len(calls) == 1 and APIKey.objects.get(pk=key.pk).revoked


def test_deleting_a_key_closes_its_sockets(serve, db_on, outcome):
    make = _key_sockets("header")
    _revoke_flow(serve, outcome, how="key deleted", revoke=lambda: make.key.delete(), headers_for=make, within_s=3.0)


def test_a_key_expiring_by_time_closes_its_sockets_within_the_recheck(serve, db_on, outcome):
    """No write marks an expiry: the consumers' periodic re-check (COVER_WS_RECHECK_SECONDS, 5 s)
    and the re-check before each event do."""
    from django.utils import timezone

    from covers.models import APIKey

    expires_in = 2.0
    holder = {}

    def make():
        key, raw = APIKey.objects.create_key(name="ws-expiring",
                                             expiry_date=timezone.now() + timedelta(seconds=expires_in))
        holder["t_created"] = time.monotonic()
        hdr = {"X-API-Key": raw}
        return _job(owner=key), lambda j: [("/ws/cover/jobs/", hdr), (f"/ws/cover/jobs/{j.id}/", hdr)]

    def wait_for_expiry():
        time.sleep(max(0.0, holder["t_created"] + expires_in - time.monotonic()))

    # events keep flowing through the expiry (every 0.1 s): none sent after it may arrive
    _revoke_flow(serve, outcome, how="key expired by time (no write; periodic re-check)", revoke=wait_for_expiry,
                 headers_for=make, within_s=expires_in + 0.5)
    # and with no event flowing at all, the timer alone closes a socket
    key, raw = APIKey.objects.create_key(name="ws-expiring-quiet",
                                         expiry_date=timezone.now() + timedelta(seconds=expires_in))
    w = Watcher(serve.ws + "/ws/cover/jobs/", {"X-API-Key": raw})
    t0 = time.monotonic()
    assert w.wait_closed(expires_in + RECHECK_S + 3), "the quiet socket stayed open past expiry + re-check"
    took = round(w.closed_at - t0, 2)
    outcome("WebSocket of a key that expires by time, no events flowing (serve)",
            expected=f"closes 4401 within expiry ({expires_in:g} s) + COVER_WS_RECHECK_SECONDS ({RECHECK_S:g} s)",
            measured=f"close {w.close_code} after {took} s")
    assert w.close_code == 4401 and took <= expires_in + RECHECK_S + 1.5


def _user_with_key(name: str):
    from django.contrib.auth import get_user_model

    from covers.models import APIKey

    user = get_user_model().objects.create_user(name, password="pw-" + name)
    APIKey.objects.create_key(name=f"{name}-key", owner=user)  # a user who owns a usable key may use the page
    return user


def test_deactivating_a_user_closes_their_token_sockets(serve, db_on, outcome):
    from covers.auth import Caller
    from covers.ws_auth import ws_token_issue

    holder = {}

    def make():
        user = holder["user"] = _user_with_key("ws-deactivated")
        token = ws_token_issue(caller=Caller(api_key=None, user=user))
        return _job(user=user), lambda j: [(f"/ws/cover/jobs/?token={token}", {}),
                                           (f"/ws/cover/jobs/{j.id}/?token={token}", {})]

    def deactivate():  # what Django's user admin does
        user = holder["user"]
        user.is_active = False
        user.save()

    _revoke_flow(serve, outcome, how="user deactivated (?token= of the user)", revoke=deactivate,
                 headers_for=make, within_s=3.0)


def test_logging_out_closes_the_sessions_sockets(serve, db_on, outcome):
    holder = {}

    def make():
        user = _user_with_key("ws-logout")
        http = holder["http"] = requests.Session()
        http.get(serve.base + "/accounts/login/", timeout=10)
        r = http.post(serve.base + "/accounts/login/", timeout=10, allow_redirects=False,
                      data={"username": "ws-logout", "password": "pw-ws-logout",
                            "csrfmiddlewaretoken": http.cookies["csrftoken"]},
                      headers={"Referer": serve.base + "/accounts/login/"})
        assert r.status_code == 302 and "sessionid" in http.cookies, r.text[:500]
        hdr = {"Cookie": "; ".join(f"{k}={v}" for k, v in http.cookies.items()), "Origin": serve.base}
        return _job(user=user), lambda j: [("/ws/cover/jobs/", hdr), (f"/ws/cover/jobs/{j.id}/", hdr)]

    def logout():
        http = holder["http"]
        r = http.post(serve.base + "/accounts/logout/", timeout=10, allow_redirects=False,
                      data={"csrfmiddlewaretoken": http.cookies["csrftoken"]},
                      headers={"Referer": serve.base + "/"})
        assert r.status_code == 302, r.text[:500]

    _revoke_flow(serve, outcome, how="user logged out (session cookie)", revoke=logout, headers_for=make,
                 within_s=3.0)


# --------------------------------------------------------------------------------------------
# defect 2: the body limit acts before the body is read
# --------------------------------------------------------------------------------------------
def _spool_bytes(tmp: Path) -> int:
    return sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())


def _open_fds_to_tmp(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(("/tmp", str(ROOT))) and "(deleted)" in target:
            out.append(target)
    return out


def _server_pids(server) -> list[int]:
    pids = [server.proc.pid]
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def test_a_declared_300_mb_body_is_413_before_it_is_sent_and_nothing_is_written(serve, outcome, db_on):
    from covers.models import APIKey

    _, raw = APIKey.objects.create_key(name="big-body")
    spool = serve.tmp / "spool"
    before = _spool_bytes(spool)
    s = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    t0 = time.monotonic()
    s.sendall(b"POST /api/v1/cover/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + raw.encode()
              + b"\r\nContent-Type: multipart/form-data; boundary=zzz\r\nContent-Length: 314572800\r\n\r\n")
    s.settimeout(2.0)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    except socket.timeout:
        pass
    took = time.monotonic() - t0
    deleted_open = [t for pid in _server_pids(serve) for t in _open_fds_to_tmp(pid)]
    grew = _spool_bytes(spool) - before
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    outcome("Content-Length: 314572800 (300 MB), no body sent (manage.py serve)",
            expected="413 JSON within 2 s, before any body byte; no temporary file written",
            measured=f"{head.split(b' ')[1].decode() if head else 'no answer'} in {took:.3f} s; "
                     f"temp files grew {grew} B; deleted-but-open files {len(deleted_open)}")
    assert head.startswith(b"HTTP/1.1 413"), (answer[:300], serve.logs()[-2000:])
    assert json.loads(body)["error"]["code"] == "upload_too_large"
    assert took < 2.0 and grew == 0 and not deleted_open


def test_a_chunked_body_over_the_limit_is_cut_off_at_the_limit(serve, outcome, db_on):
    from covers.models import APIKey

    _, raw = APIKey.objects.create_key(name="chunked-body")
    s = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    s.sendall(b"POST /api/v1/cover/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + raw.encode()
              + b"\r\nContent-Type: multipart/form-data; boundary=zzz\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent, cut, answer = 0, None, b""
    s.settimeout(0.05)
    while sent < 20 * LIMIT:  # a client that would send 60 MB
        try:
            s.sendall(frame)
            sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            cut = "connection closed"
            break
        try:
            chunk = s.recv(65536)
            if chunk:
                answer += chunk
                cut = "answered"
                break
            cut = "connection closed"
            break
        except socket.timeout:
            continue
        except ConnectionResetError:
            cut = "connection reset"
            break
    if cut == "answered":
        s.settimeout(2)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    s.close()
    status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1") else None
    outcome("chunked body with no declared length, 60 MB offered (limit 3 MB, manage.py serve)",
            expected="cut off near the limit: 413 JSON or the connection closed",
            measured=f"{cut}{' ' + status if status else ''} after {sent / 1024 / 1024:.1f} MB sent")
    assert cut is not None, "the server read 60 MB of a 3 MB-limited body"
    # the client's socket buffers hold some MB the server never read; the cut is near the limit
    assert sent < LIMIT + 8 * 1024 * 1024, sent
    if status is not None:
        assert status == "413" and b"upload_too_large" in answer, answer[:400]


def test_a_request_head_over_16_kb_gets_431(serve, outcome):
    small = requests.get(serve.base + "/healthz", headers={"X-Pad": "a" * 8000}, timeout=10)
    big = requests.get(serve.base + "/healthz", headers={"X-Pad": "a" * 17000}, timeout=10)
    s = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    s.sendall(b"GET /ws/cover/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Pad: "
              + b"a" * 17000 + b"\r\n\r\n")
    ws_answer = s.recv(200)  # a WebSocket handshake goes through the same parser
    s.close()
    outcome("request head over 16 kB (serve)", expected="431 JSON (a head under 16 kB is served)",
            measured=f"8 kB header {small.status_code}; 17 kB header {big.status_code} {big.json()['error']['code']}; "
                     f"17 kB WebSocket handshake {ws_answer.split(b' ')[1].decode()}")
    assert small.status_code == 200
    assert big.status_code == 431 and big.json()["error"]["code"] == "headers_too_large"
    assert ws_answer.startswith(b"HTTP/1.1 431")


# --------------------------------------------------------------------------------------------
# defect 4: unrouted WebSocket paths
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["serve", "daphne"])
def test_a_websocket_to_an_unrouted_path_is_refused_cleanly(servers, outcome, kind):
    server = servers[kind]
    mark = len(server.logs())
    codes = {}
    for p in ("/ws/nope/", "/ws/cover/jobs", "/ws/cover/jobs/x/y/"):
        w = Watcher(server.ws + p)
        assert w.wait_closed(10)
        codes[p] = w.close_code if w.error is None else w.error
    time.sleep(0.3)
    new_log = server.logs()[mark:]
    outcome(f"WebSocket handshake to an unrouted path ({kind})", expected="closed 4404; no error logged",
            measured=f"{codes}; errors logged: {'Traceback' in new_log or 'ERROR' in new_log}")
    assert set(codes.values()) == {4404}, (codes, new_log[-2000:])
    assert "Traceback" not in new_log and "ERROR" not in new_log and " 500" not in new_log, new_log[-2000:]


# --------------------------------------------------------------------------------------------
# defect 3: too many form parts (in this process: the Django test client)
# --------------------------------------------------------------------------------------------
def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    out = []
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--zzz\r\nContent-Disposition: {disp}\r\n".encode()
                   + (b"Content-Type: application/octet-stream\r\n" if filename else b"") + b"\r\n" + data + b"\r\n")
    return b"".join(out) + b"--zzz--\r\n", "multipart/form-data; boundary=zzz"


FORM_CASES = [
    ("150 file parts", lambda: _multipart([(f"f{i}", f"f{i}.wav", b"RIFF") for i in range(150)]), "too_many_files",
     "100"),
    ("1001 multipart fields", lambda: _multipart([(f"x{i}", None, b"1") for i in range(1001)]), "too_many_fields",
     "1000"),
    ("1001 urlencoded fields", lambda: ("&".join(f"x{i}=1" for i in range(1001)).encode(),
                                        "application/x-www-form-urlencoded"), "too_many_fields", "1000"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("row,build,code,limit", FORM_CASES, ids=[c[0] for c in FORM_CASES])
def test_too_many_form_parts_is_400_naming_the_limit(outcome, caplog, row, build, code, limit):
    from covers.models import APIKey

    _, raw = APIKey.objects.create_key(name="form-parts")
    body, ctype = build()
    client = Client(raise_request_exception=False)
    with caplog.at_level(logging.INFO):
        resp = client.generic("POST", "/api/v1/cover/jobs", body, content_type=ctype, HTTP_X_API_KEY=raw)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    err = resp.json()["error"]
    outcome(f"{row} in one create", expected=f"400 {code} naming the limit ({limit}); no traceback logged",
            measured=f"{resp.status_code} {err['code']}: {err['message']}; errors logged {len(errors)}")
    assert resp.status_code == 400 and err["code"] == code and limit in err["message"], err
    assert not errors, [r.getMessage() for r in errors]


# --------------------------------------------------------------------------------------------
# risks: JSON errors on API paths whatever DEBUG is; a bad Host
# --------------------------------------------------------------------------------------------
def _boom(request):
    raise RuntimeError("boom")


urlpatterns = [url_path("api/v1/boom", _boom)]  # this module doubles as a URLconf (500 below)


def _with_boom():
    from coverproject import urls

    return urlpatterns + urls.urlpatterns


API_ERRORS = [
    ("GET", "/api/v1/nope", 404), ("GET", "/api/v1/cover/nope/", 404), ("GET", "/ws/cover/jobs/", 404),
    ("GET", "/healthz/nope", 404), ("POST", "/readyz", 405), ("PUT", "/api/v1/cover/jobs", 405),
    ("GET", "/api/v1/boom", 500),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("debug", [True, False], ids=["DEBUG on", "DEBUG off"])
def test_api_paths_answer_json_errors_whatever_debug_is(outcome, debug, monkeypatch):
    from covers.models import APIKey

    _, raw = APIKey.objects.create_key(name="json-errors")
    import tests.hardening.test_round2_web as me

    monkeypatch.setattr(me, "urlpatterns", _with_boom(), raising=True)
    client = Client(raise_request_exception=False)
    got = {}
    with override_settings(DEBUG=debug, ROOT_URLCONF=__name__):
        for method, p, want in API_ERRORS:
            resp = client.generic(method, p, HTTP_X_API_KEY=raw)
            ctype = resp.get("Content-Type", "")
            body = resp.json() if ctype.startswith("application/json") else None
            got[f"{method} {p}"] = (resp.status_code, ctype.split(";")[0],
                                    body and sorted(body.get("error", {})) == ["code", "field", "message"])
        bad_api = client.get("/api/v1/cover/jobs", HTTP_HOST="evil.example", HTTP_X_API_KEY=raw)
        bad_page = client.get("/accounts/login/", HTTP_HOST="evil.example")
    outcome(f"API error answers with DEBUG {'on' if debug else 'off'} (404, 405, 500; bad Host)",
            expected="JSON {error: code, message, field} with the status, never an HTML page; bad Host a short 400",
            measured="; ".join(f"{k} {v[0]} {v[1]}" for k, v in got.items())
                     + f"; bad Host: API {bad_api.status_code} {bad_api.get('Content-Type')}, page "
                       f"{bad_page.status_code} {len(bad_page.content)} B")
    for (method, p, want), (status, ctype, shaped) in zip(API_ERRORS, got.values()):
        assert (status, ctype, shaped) == (want, "application/json", True), (method, p, status, ctype)
    assert bad_api.status_code == 400 and bad_api.json()["error"]["code"] == "bad_host"
    assert bad_page.status_code == 400 and len(bad_page.content) < 100 and b"<" not in bad_page.content


def test_api_paths_answer_json_through_the_dev_server(servers, tmp_path_factory, outcome, db_on):
    """The README's first command runs the dev settings (DEBUG on): through a real server."""
    from django.conf import settings as dj

    tmp = tmp_path_factory.mktemp("devserver")
    env = e2e_env(tmp, DJANGO_SETTINGS_MODULE="coverproject.settings.dev", DJANGO_DEBUG="true",
                  REDIS_URL=dj.REDIS_URL)
    server = Server("serve", tmp, env)
    try:
        server.wait_up()
        got = {}
        for method, p in (("GET", "/api/v1/nope"), ("GET", "/ws/nope/"), ("POST", "/readyz"), ("GET", "/metrics/x")):
            r = requests.request(method, server.base + p, timeout=10)
            got[f"{method} {p}"] = (r.status_code, r.headers.get("Content-Type", "").split(";")[0])
        bad = requests.get(server.base + "/api/v1/cover/jobs", headers={"Host": "evil.example"}, timeout=10)
        bad_page = requests.get(server.base + "/", headers={"Host": "evil.example"}, timeout=10)
    finally:
        server.stop()
    outcome("API errors through `manage.py serve` with the dev settings (DEBUG on)",
            expected="JSON errors; bad Host a short 400 (JSON on API paths)",
            measured="; ".join(f"{k} {v[0]} {v[1]}" for k, v in got.items())
                     + f"; bad Host: API {bad.status_code} {bad.headers.get('Content-Type')}, page "
                       f"{bad_page.status_code} {len(bad_page.content)} B")
    # POST /readyz: 403 here (no CSRF token: the test client above skips that check), JSON all the same
    assert all(ct == "application/json" and status in (403, 404, 405) for status, ct in got.values()), got
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_host"
    assert bad_page.status_code == 400 and len(bad_page.content) < 100
