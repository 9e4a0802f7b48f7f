"""HTTP API benchmark (issue 3): a real daphne (one process) on a temporary database.

1. create: POST /api/v1/cover/jobs with two ~5 MB WAV uploads (a stereo 44.1 kHz song and a mono
   reference voice, built with tests/signals.py), sent one after another with `requests`
   (a fresh connection each, as a script or browser upload would); wall time from send to the
   201 response. A few warm-up requests are not counted. No worker runs: the jobs stay queued.
2. status: GET /api/v1/cover/jobs/{id} by N concurrent clients (default 50), open loop at a
   target total rate (default 200 req/s) for D seconds (default 20). Each client is an asyncio
   task with one keep-alive HTTP/1.1 connection (a minimal client on asyncio streams, so the
   load generator itself costs little CPU on a small machine); client i sends at
   t0 + (i + k * N) / rate. Reported: achieved req/s, latency (send -> full response) p50/p95/p99/max,
   the same measured from the scheduled send time (includes any client-side lag: coordinated
   omission corrected), errors (non-200, connection errors, timeouts).

The API key comes from `manage.py create_api_key` (its job limits raised far above the
COVER_KEY_DEFAULT_* a new key gets). Everything is temporary: a SQLite file (or, with --postgres, a PostgreSQL
database that the bench creates and drops), the media folder, and the jobs' keys in the Redis DB.

Usage:
    .venv/bin/python bench/api_bench.py [--creates 30] [--clients 50] [--rate 200[,100,...]] [--duration 20]
        [--postgres postgres://postgres@127.0.0.1:5432/postgres] [--json out.json]
Redis: REDIS_URL (default redis://127.0.0.1:6379/8); that DB is flushed at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summary, wait_until_serving  # noqa: E402
from tests.processes import free_port  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds so far of a process and its live descendants (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def make_inputs(tmp: Path, target_bytes: int) -> tuple[Path, Path]:
    """A stereo song and a mono reference voice, 16-bit 44.1 kHz WAV, each ~target_bytes."""
    import numpy as np

    from tests import signals

    sr = signals.SR
    song_s = (target_bytes - 44) / (sr * 2 * 2)
    ref_s = min((target_bytes - 44) / (sr * 2), 59.0)  # reference voice: at most 60 s
    mix, *_ = signals.song(song_s, sr)
    ref = signals.reference_voice(ref_s, sr)
    ref = np.clip(ref * 2.0, -0.9, 0.9)
    return signals.write(tmp / "song.wav", mix, sr), signals.write(tmp / "reference.wav", ref, sr)


# --------------------------------------------------------------------------------------------
# 1. create latency
# --------------------------------------------------------------------------------------------
def bench_create(base: str, key: str, song: Path, ref: Path, n: int, warmup: int) -> dict:
    import requests

    url = base + "/api/v1/cover/jobs"
    ms, errors, job_ids = [], [], []
    for i in range(warmup + n):
        with open(song, "rb") as fs, open(ref, "rb") as fr:
            files = {"song": ("song.wav", fs, "audio/wav"), "reference_voice": ("reference.wav", fr, "audio/wav")}
            t0 = time.perf_counter()
            try:
                r = requests.post(url, files=files, data={"pitch_shift": "0"}, headers={"X-API-Key": key},
                                  timeout=60)
            except requests.RequestException as exc:
                errors.append(repr(exc))
                continue
            dt = (time.perf_counter() - t0) * 1000
        if r.status_code != 201:
            errors.append(f"{r.status_code} {r.text[:200]}")
            continue
        job_ids.append(r.json()["job_id"])
        if i >= warmup:
            ms.append(dt)
    return {"requests": n, "warmup": warmup, "song_bytes": song.stat().st_size,
            "reference_bytes": ref.stat().st_size, "latency_ms": summary(ms), "errors": len(errors),
            "error_examples": errors[:3], "job_ids": job_ids}


# --------------------------------------------------------------------------------------------
# 2. status reads under load
# --------------------------------------------------------------------------------------------
class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length responses only, which is all DRF sends)."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port, self.key = host, port, key
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        req = (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {self.key}\r\n"
               f"Accept: application/json\r\nConnection: keep-alive\r\n\r\n").encode()
        self.writer.write(req)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def bench_status(base: str, key: str, job_ids: list[str], clients: int, rate: float,
                       duration: float, timeout: float = 10.0) -> dict:
    host, port = base.removeprefix("http://").split(":")
    port = int(port)
    conns = [Conn(host, port, key) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    # one warm-up request per connection (not counted)
    for c in conns:
        await c.get(f"/api/v1/cover/jobs/{job_ids[0]}")
    service_ms, sched_ms, errors, ok = [], [], [], 0
    interval = clients / rate
    loop = asyncio.get_running_loop()
    t_start = loop.time() + 0.5
    t_end = t_start + duration

    async def client(i: int) -> None:
        nonlocal ok
        c = conns[i]
        k = 0
        while True:
            when = t_start + (i / rate) + k * interval
            if when >= t_end:
                return
            k += 1
            delay = when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            job = job_ids[(i + k) % len(job_ids)]
            t0 = loop.time()
            try:
                status, body = await asyncio.wait_for(c.get(f"/api/v1/cover/jobs/{job}"), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                errors.append(repr(exc))
                c.close()
                continue
            t1 = loop.time()
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")
                continue
            ok += 1
            service_ms.append((t1 - t0) * 1000)
            sched_ms.append((t1 - when) * 1000)

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = loop.time() - t_start
    for c in conns:
        c.close()
    return {"clients": clients, "target_rps": rate, "duration_s": duration, "elapsed_s": round(elapsed, 2),
            "ok": ok, "achieved_rps": round(ok / elapsed, 1), "errors": len(errors),
            "error_examples": errors[:3], "latency_ms": summary(service_ms),
            "latency_from_schedule_ms": summary(sched_ms)}


# --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mb", type=float, default=5.0, help="size of each upload in MB (10^6 bytes)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rate", default="200", help="target req/s for the status phase; a comma list runs "
                    "one phase per rate (e.g. 50,100,200)")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--postgres", default="", help="admin URL of a PostgreSQL server: use a new database there "
                    "(created and dropped by the bench) instead of SQLite")
    ap.add_argument("--processes", type=int, default=0, help="serve with `manage.py serve --processes N` "
                    "(N daphne processes on one socket) instead of one plain daphne")
    ap.add_argument("--json", default="")
    ap.add_argument("--daphne-log", default="", help="keep daphne's log (stdout+stderr) at this path")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="api-bench-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8")
    assert not redis_url.rstrip("/").endswith("/0"), "use a Redis DB of its own, not 0"
    pg_db = ""
    if args.postgres:
        import psycopg

        pg_db = f"api_bench_{os.getpid()}"
        with psycopg.connect(args.postgres, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{pg_db}"')
        db_url = args.postgres.rsplit("/", 1)[0] + "/" + pg_db
    else:
        db_url = f"sqlite:///{tmp / 'db.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVER_", "DJANGO_", "GPT_SOVITS"))}
    env.update({"DJANGO_SETTINGS_MODULE": "coverproject.settings.dev", "DJANGO_DEBUG": "false",
                "DATABASE_URL": db_url, "REDIS_URL": redis_url, "CHANNEL_PREFIX": f"apibench{os.getpid()}",
                "COVER_VAR_DIR": str(tmp), "COVER_WEBHOOK_THREADS": "1", "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1"})
    daphne = None
    results: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "database": "postgresql" if pg_db else "sqlite"}
    load = [os.getloadavg()[0]]
    try:
        manage = [sys.executable, "manage.py"]
        subprocess.run(manage + ["migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
        out = subprocess.run(manage + ["create_api_key", "api-bench", "--max-concurrent-jobs", "1000000",
                                       "--jobs-per-day", "1000000"], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout
        key = out.strip().splitlines()[-1]
        song, ref = make_inputs(tmp, int(args.mb * 1_000_000))

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(tmp / "daphne.log", "wb")
        if args.processes:
            server = manage + ["serve", "--port", str(port), "--processes", str(args.processes)]
        else:
            server = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                      "coverproject.asgi:application"]
        daphne = subprocess.Popen(server, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        wait_until_serving(base + "/healthz", daphne, tmp / "daphne.log")

        cpu0 = cpu_seconds(daphne.pid)
        results["create"] = bench_create(base, key, song, ref, args.creates, args.warmup)
        n_created = len(results["create"]["job_ids"])
        results["create"]["daphne_cpu_ms_per_request"] = round(
            (cpu_seconds(daphne.pid) - cpu0) * 1000 / max(1, n_created), 1)
        load.append(os.getloadavg()[0])
        job_ids = results["create"].pop("job_ids")
        if not job_ids:
            raise SystemExit("no job was created: " + json.dumps(results["create"]))
        results["status"] = []
        for rate in [float(r) for r in str(args.rate).split(",")]:
            cpu0 = cpu_seconds(daphne.pid)
            res = asyncio.run(bench_status(base, key, job_ids, args.clients, rate, args.duration))
            res["daphne_cpu_ms_per_request"] = round(
                (cpu_seconds(daphne.pid) - cpu0) * 1000 / max(1, res["ok"] + res["errors"] + args.clients), 2)
            res["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            results["status"].append(res)
        load.append(os.getloadavg()[0])
    finally:
        if daphne is not None and daphne.poll() is None:
            os.killpg(daphne.pid, signal.SIGTERM)
            try:
                daphne.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(daphne.pid, signal.SIGKILL)
                daphne.wait(5)
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        if args.daphne_log and (tmp / "daphne.log").exists():
            shutil.copy(tmp / "daphne.log", args.daphne_log)
        if pg_db:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "load_avg_1m_start_mid_end": [round(x, 2) for x in load]}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
