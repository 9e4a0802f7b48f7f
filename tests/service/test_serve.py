"""`manage.py serve`: N real daphne processes on one listening socket, a dead one restarted, all
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


def test_serve_runs_n_daphne_processes_on_one_socket_restarts_a_dead_one_and_stops_on_sigterm(
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
                return requests.get(base + "/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, 60, "the first answer")
        kids = wait_for(lambda: (lambda k: k if len(k) == 2 else None)(children(proc.pid)), 30,
                        "two daphne children")
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
