"""`manage.py serve`: N uvicorn processes accepting on one listening socket.

One process runs Django's sync views one Python thread at a time (the GIL), so it uses one core:
on the 2-core bench machine a single process tops out near 100 status reads per second
(bench/api_bench.py). This command binds the socket once and starts N uvicorn children with
``--fd`` (the kernel spreads new connections over them), restarts a child that dies, and stops
them all on SIGINT/SIGTERM (each child finishes its open requests, up to 30 s).
WebSockets work across processes: every consumer talks to the Redis channel layer.

uvicorn, not daphne: it hands the request body to the application as it arrives, so
covers.body_limit answers an oversized upload with 413 before reading it (daphne stores the whole
body in a temporary file first; see covers/server.py), and it answers 431 to oversized headers.

    python manage.py serve --bind 0.0.0.0 --port 8000 --processes 4 --proxy-headers
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from covers.server import uvicorn_command

RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10)  # waits before restarting a child that keeps dying
STOP_GRACE_S = 30.0  # SIGTERM -> SIGKILL for children that do not stop


class Command(BaseCommand):
    help = "Serve the ASGI application with N uvicorn processes sharing one listening socket."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--processes", type=int, default=None,
                            help="server processes (default COVER_WEB_PROCESSES, 1)")
        parser.add_argument("--proxy-headers", action="store_true",
                            help="trust X-Forwarded-For/-Proto from a reverse proxy")
        parser.add_argument("--access-log", action="store_true",
                            help="log every request to stdout (default: none)")
        parser.add_argument("--application", default=settings.ASGI_APPLICATION.replace(".application", ":application"))

    def handle(self, *args, **opts):
        n = opts["processes"] or settings.COVER_WEB_PROCESSES
        if n < 1:
            raise CommandError("--processes must be at least 1")
        family = socket.AF_INET6 if ":" in opts["bind"] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((opts["bind"], opts["port"]))
        except OSError as exc:
            raise CommandError(f"cannot listen on {opts['bind']}:{opts['port']}: {exc.strerror}") from exc
        sock.listen(1024)
        sock.set_inheritable(True)
        fd = sock.fileno()
        cmd = uvicorn_command(opts["application"], fd=fd, proxy_headers=opts["proxy_headers"],
                              access_log=opts["access_log"])

        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def start() -> subprocess.Popen:
            return subprocess.Popen(cmd, pass_fds=[fd], env=os.environ.copy())

        children = [start() for _ in range(n)]
        deaths = [0] * n
        self.stdout.write(f"serving {opts['application']} on {opts['bind']}:{opts['port']} "
                          f"with {n} uvicorn process(es): pids {[c.pid for c in children]}")
        self.stdout.flush()
        try:
            while not stopping:
                time.sleep(0.2)
                for i, child in enumerate(children):
                    code = child.poll()
                    if code is None or stopping:
                        continue
                    wait = RESTART_BACKOFF_S[min(deaths[i], len(RESTART_BACKOFF_S) - 1)]
                    deaths[i] += 1
                    self.stderr.write(f"server pid {child.pid} exited with {code}; restarting in {wait} s")
                    time.sleep(wait)
                    children[i] = start()
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for child in children:
                try:
                    child.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            sock.close()
