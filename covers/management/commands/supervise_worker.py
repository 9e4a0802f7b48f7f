"""`manage.py supervise_worker [QUEUE ...]`: one `manage.py rqworker` child, restarted when it dies.

The worker exits on purpose after its stage watchdog fired (code 70: a hung stage cannot be
stopped otherwise, covers.worker) and can die (killed, out of memory); this supervisor starts a
fresh one each time, after a backoff that grows while the worker keeps dying young (1, 2, 5, 10,
30 s; back to 1 s once a worker has lived COVER_SUPERVISOR_HEALTHY_SECONDS), and logs each
restart. SIGINT/SIGTERM are passed on to the worker (once: a warm shutdown that finishes the job;
twice: a cold one) and the supervisor exits with it. What scripts/setup_and_run.sh runs.

    python manage.py supervise_worker cover [--worker-arg=--with-scheduler ...]
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
EXIT_REASONS = {70: "its stage watchdog fired (a stage ran over its limit)"}


class Command(BaseCommand):
    help = "Run `manage.py rqworker QUEUE...` and restart it whenever it exits (with backoff)."

    def add_arguments(self, parser):
        parser.add_argument("queues", nargs="*", help="queues (default COVER_QUEUE_NAME)")
        parser.add_argument("--worker-arg", action="append", default=[],
                            help="an extra argument for rqworker (repeatable)")

    def handle(self, *args, queues=None, worker_arg=None, **opts):
        queues = list(queues or []) or [settings.COVER_QUEUE_NAME]
        cmd = [sys.executable, str(settings.BASE_DIR / "manage.py"), "rqworker", *queues, *(worker_arg or [])]
        healthy_after = float(getattr(settings, "COVER_SUPERVISOR_HEALTHY_SECONDS", 60))
        signals_seen: list[float] = []  # when each stop request came

        def on_signal(signum, frame):
            now = time.monotonic()
            if signals_seen and now - signals_seen[-1] < 1.0:
                return  # Ctrl-C and the script's own TERM a moment later are one request to stop
            signals_seen.append(now)
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM if len(signals_seen) == 1 else signal.SIGINT)

        def start() -> subprocess.Popen:
            # its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes
            # it on once (a second Ctrl-C would turn the worker's warm shutdown into a cold one)
            proc = subprocess.Popen(cmd, cwd=str(settings.BASE_DIR), process_group=0, preexec_fn=_die_with_parent)
            self._say(f"worker started: pid {proc.pid} ({' '.join(queues)})")
            return proc

        child = None
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        deaths = 0
        child = start()
        started = time.monotonic()
        while True:
            code = child.wait()
            if signals_seen:
                self._say(f"worker pid {child.pid} stopped (exit code {code}); supervisor exiting")
                return
            lived = time.monotonic() - started
            deaths = 0 if lived >= healthy_after else deaths + 1
            wait = RESTART_BACKOFF_S[min(max(deaths - 1, 0), len(RESTART_BACKOFF_S) - 1)]
            if code is not None and code < 0:
                reason = f"was killed by {signal.Signals(-code).name}"
            else:
                reason = f"exited with code {code}" + (f": {EXIT_REASONS[code]}" if code in EXIT_REASONS else "")
            self._say(f"worker pid {child.pid} {reason} after {lived:.0f} s; restarting in {wait} s", error=True)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not signals_seen:
                time.sleep(0.1)
            if signals_seen:
                self._say("supervisor exiting (no worker running)")
                return
            child = start()
            started = time.monotonic()

    def _say(self, message: str, error: bool = False) -> None:
        stream = self.stderr if error else self.stdout
        stream.write(f"[supervise_worker] {message}")
        stream.flush()


def _die_with_parent() -> None:
    """In the worker before exec (Linux): SIGTERM it when the supervisor itself dies (SIGKILL
    included), so no worker outlives its supervisor unnoticed."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the supervisor's own SIGTERM handling still stops it
        pass
