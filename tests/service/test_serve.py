"""`manage.py serve`: N real uvicorn processes on one listening socket, a dead one restarted, all
stopped by one SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.processes import ROOT, e2e_env, free_port

pytestmark = [pytest.mark.e2e]


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_runs_n_server_processes_on_one_socket_restarts_a_dead_one_and_stops_on_sigterm(
        e2e_database, django_db_blocker, tmp_path):
    with django_db_blocker.unblock():
        env = e2e_env(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port), "--processes", "2"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    logs = lambda: (tmp_path / "serve.log").read_text(errors="replace")[-4000:]  # noqa: E731
    try:
        def healthy():
            assert proc.poll() is None, logs()
            try:
                return requests.get(base + "/healthz", timeout=10).status_code == 200
            except (requests.ConnectionError, requests.Timeout):   # not up yet, or busy starting
                return False

        wait_for(healthy, 60, "the first answer")
        kids = wait_for(lambda: (lambda k: k if len(k) == 2 else None)(children(proc.pid)), 30,
                        "two server children")
        # every child accepts on the parent's listening socket (the same inode), none binds its own
        listening = socket_inodes(proc.pid)
        for kid in kids:
            assert listening & socket_inodes(kid), f"child {kid} does not share the listening socket"
        # new connections are answered, whichever child takes them
        assert all(requests.get(base + "/healthz", headers={"Connection": "close"}, timeout=5).status_code == 200
                   for _ in range(20))

        os.kill(kids[0], signal.SIGKILL)
        t0 = time.monotonic()
        replaced = wait_for(lambda: (lambda k: k if len(k) == 2 and kids[0] not in k else None)(children(proc.pid)),
                            15, "the killed child to be replaced")
        assert kids[1] in replaced
        # the survivor served meanwhile; the replacement serves too once up
        wait_for(healthy, 30, "answers after the restart")
        assert "restarting" in logs()
        assert time.monotonic() - t0 < 30

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, logs()
        for kid in replaced:
            assert not Path(f"/proc/{kid}").exists() or "zombie" in Path(f"/proc/{kid}/status").read_text()
        with pytest.raises(requests.ConnectionError):
            requests.get(base + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_daphne_hands_multipart_bodies_to_django_without_twisted_parsing_them():
    """coverproject.asgi makes daphne's requests opt out of Twisted's own multipart parsing (daphne
    never reads its result; it cost most of daphne's CPU on large uploads)."""
    import io
    from types import SimpleNamespace

    from twisted.internet.testing import StringTransport
    from twisted.web import http

    import coverproject.asgi  # noqa: F401  (what daphne imports before serving)
    from daphne import http_protocol

    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"song\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n" + b"\x00" * 1000 + b"\r\n--XyZ--\r\n")

    def receive(request_class):
        class Probe(request_class):
            def process(self):
                self.processed = True

        server = SimpleNamespace(protocol_connected=lambda request: None)
        channel = http.HTTPChannel()
        channel.factory = SimpleNamespace(server=server)
        channel.makeConnection(StringTransport())
        req = Probe(channel)
        req.requestHeaders.setRawHeaders(b"content-type", [b"multipart/form-data; boundary=XyZ"])
        req.content = io.BytesIO(body)
        req.content.seek(0, 2)
        req.requestReceived(b"POST", b"/api/v1/cover/jobs", b"HTTP/1.1")
        assert req.processed
        return req

    assert b"song" in receive(http.Request).args  # what Twisted does by default
    served = receive(http_protocol.WebRequest)
    assert served.args == {} and served.content.read() == body  # the raw body is left for ASGI
    built = http_protocol.HTTPFactory(server=None).buildProtocol(("127.0.0.1", 0))
    assert built.requestFactory is http_protocol.WebRequest  # what daphne builds its requests from
