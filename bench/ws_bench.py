"""WebSocket benchmark: a real daphne (one process) + channels-redis, events sent by a separate
"worker" process through covers.services/covers.notifications, received by `websockets` clients.

1. latency: one client follows one running job; the worker process records 200 progress changes
   (cover_job_progress, force=True: DB UPDATE + notify after commit), 20 ms apart. Reported:
   notify -> client (the event's ``ts`` is stamped in notify_job_changed) and DB write start ->
   client, p50/p95/p99/max in ms.
2. concurrency: 200 clients (half with the X-API-Key header, half with a signed ?token=) each
   follow their own running job; the worker sends 5 progress changes per job and then finishes
   every job. Each client must get snapshot + 5 updates + succeeded, then a normal close (1000).

Usage (Redis at REDIS_URL, default redis://127.0.0.1:6379/11; everything else is temporary):
    .venv/bin/python bench/ws_bench.py [--events 200] [--clients 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summary, wait_until_serving  # noqa: E402
from tests.processes import free_port  # noqa: E402
STAGES = ["preprocess", "separate", "infer", "mix", "finalize"]


def setup_django(env: dict) -> None:
    os.environ.update(env)
    import django

    django.setup()


def ts_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# --------------------------------------------------------------------------------------------
# the "worker" side (a separate process)
# --------------------------------------------------------------------------------------------
def worker_main(args) -> None:
    setup_django({})
    from covers import services
    from covers.models import CoverJob

    out = {}
    if args.mode == "latency":
        job = CoverJob.objects.get(pk=args.jobs[0])
        for i in range(args.count):
            stage, progress = STAGES[i % 2], i // 2  # strictly increasing (progress, stage) pairs
            out[f"{progress}:{stage}"] = time.time()
            services.cover_job_progress(job=job, stage=stage, progress=progress, force=True)
            time.sleep(args.interval)
    else:
        jobs = list(CoverJob.objects.filter(pk__in=args.jobs))
        for r in range(1, 6):
            for job in jobs:
                services.cover_job_progress(job=job, stage=STAGES[r - 1], progress=r * 15, force=True)
            time.sleep(args.interval)
        for job in jobs:
            services.cover_job_transition(job_id=job.id, to=CoverJob.Status.SUCCEEDED, attempt=1)
    Path(args.out).write_text(json.dumps(out))


# --------------------------------------------------------------------------------------------
# the bench (clients)
# --------------------------------------------------------------------------------------------


async def follow(url: str, headers: dict, expect_updates: int, received: list, ready: asyncio.Event | None,
                 timeout: float) -> dict:
    import websockets

    got, close_code = [], None
    async with websockets.connect(url, additional_headers=headers, open_timeout=30, max_queue=None) as ws:
        try:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    t = time.time()
                    ev = json.loads(raw)
                    got.append((t, ev))
                    received.append((t, ev))
                    if ready is not None and len(got) == 1:
                        ready.set()
        except TimeoutError:
            pass
        close_code = ws.close_code
    return {"events": len(got), "close_code": close_code,
            "final": got[-1][1]["status"] if got else None}


def run_worker(env: dict, mode: str, jobs: list[str], out: Path, count: int = 0, interval: float = 0.02):
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--mode", mode, "--out", str(out),
           "--count", str(count), "--interval", str(interval), "--jobs", *jobs]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


async def bench(args, env: dict, base: str, jobs: list, raw_key: str, token: str, tmp: Path) -> dict:
    ws_base = base.replace("http://", "ws://")
    results: dict = {}

    # 1. latency over one job
    received: list = []
    ready = asyncio.Event()
    job = str(jobs[0].id)
    client = asyncio.create_task(follow(f"{ws_base}/ws/cover/jobs/{job}/", {"X-API-Key": raw_key},
                                        args.events, received, ready, timeout=120))
    await asyncio.wait_for(ready.wait(), 30)
    out = tmp / "latency.json"
    proc = run_worker(env, "latency", [job], out, count=args.events, interval=0.02)
    await asyncio.get_running_loop().run_in_executor(None, proc.wait)
    # the job stays running: give the last event time to land, then stop the client
    await asyncio.sleep(1.0)
    client.cancel()
    try:
        await client
    except asyncio.CancelledError:
        pass
    sent = json.loads(out.read_text())
    notify_ms, write_ms = [], []
    for t, ev in received[1:]:  # [0] is the snapshot
        notify_ms.append((t - ts_seconds(ev["ts"])) * 1000)
        t0 = sent.get(f"{ev['progress']}:{ev['stage']}")
        if t0 is not None:
            write_ms.append((t - t0) * 1000)
    results["latency"] = {"events_sent": args.events, "events_received": len(received) - 1,
                          "notify_to_client_ms": summary(notify_ms), "db_write_to_client_ms": summary(write_ms)}

    # 2. concurrency: N clients, N jobs
    n = args.clients
    targets = [str(j.id) for j in jobs[1:n + 1]]
    received2: list = []
    t0 = time.monotonic()
    readies = [asyncio.Event() for _ in targets]

    async def one(i, job_id):
        url = f"{ws_base}/ws/cover/jobs/{job_id}/"
        headers = {"X-API-Key": raw_key}
        if i % 2:
            url, headers = url + f"?token={token}", {}
        try:
            return await follow(url, headers, 6, received2, readies[i], timeout=120)
        except Exception as exc:  # noqa: BLE001 - counted as an error
            readies[i].set()
            return {"error": repr(exc)}

    tasks = [asyncio.create_task(one(i, j)) for i, j in enumerate(targets)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    connect_s = time.monotonic() - t0
    out2 = tmp / "concurrency.json"
    t1 = time.monotonic()
    proc = run_worker(env, "concurrency", targets, out2, interval=0.05)
    outcomes = await asyncio.gather(*tasks)
    proc.wait()
    done_s = time.monotonic() - t1
    errors = [o for o in outcomes if "error" in o or o["close_code"] != 1000 or o["final"] != "succeeded"
              or o["events"] != 7]
    lat = [(t - ts_seconds(ev["ts"])) * 1000 for t, ev in received2 if ev["status"] != "queued"
           and ev["progress"] > 0]
    results["concurrency"] = {
        "clients": n, "connected_and_snapshot_s": round(connect_s, 2), "all_finished_s": round(done_s, 2),
        "events_received": len(received2), "events_expected": 7 * n, "errors": len(errors),
        "error_examples": errors[:3], "notify_to_client_ms": summary(lat)}
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11")
    assert not redis_url.rstrip("/").endswith("/0"), "use a Redis DB of its own, not 0"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coverproject.settings.dev", "DJANGO_DEBUG": "false",
           "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}", "REDIS_URL": redis_url,
           "CHANNEL_PREFIX": f"wsbench{os.getpid()}", "COVER_VAR_DIR": str(tmp), "LOG_LEVEL": "WARNING",
           "PYTHONUNBUFFERED": "1"}
    setup_django(env)
    from django.core.management import call_command

    from covers.models import APIKey, CoverJob
    from covers.auth import Caller
    from covers.ws_auth import ws_token_issue

    call_command("migrate", verbosity=0)
    key, raw = APIKey.objects.create_key(name="ws-bench")
    token = ws_token_issue(caller=Caller(api_key=key, user=None))
    jobs = [CoverJob(owner=key, status="running", stage="", attempt=1, song="s.wav",
                     reference_voice="r.wav") for _ in range(args.clients + 1)]
    CoverJob.objects.bulk_create(jobs)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp / "daphne.log", "wb")
    daphne = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "coverproject.asgi:application"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(base + "/api/schema/", daphne, tmp / "daphne.log", timeout=60)
        results = asyncio.run(bench(args, env, base, jobs, raw, token, tmp))
    finally:
        os.killpg(daphne.pid, signal.SIGTERM)
        daphne.wait(10)
        import redis

        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(f"{env['CHANNEL_PREFIX']}*"):
            r.delete(k)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        ap = argparse.ArgumentParser()
        ap.add_argument("_worker")
        ap.add_argument("--mode")
        ap.add_argument("--out")
        ap.add_argument("--count", type=int, default=0)
        ap.add_argument("--interval", type=float, default=0.02)
        ap.add_argument("--jobs", nargs="+")
        worker_main(ap.parse_args())
    else:
        main()
