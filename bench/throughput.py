"""Throughput of the whole service: N jobs through real workers, in jobs per hour.

Starts daphne and W `manage.py rqworker cover` processes on a fresh SQLite database (or
--database-url) and a Redis DB of its own, submits N jobs at once through the HTTP API (the
same song and reference voice; the stem cache is off unless --stem-cache, so every job
separates), waits for all of them, and reports jobs/hour = N / (last finish - first submit).

    .venv/bin/python bench/throughput.py --workers 1 2 --jobs 4 \\
        --song /work/evalkit/out/corpus/public/cases/pub_song30_a/song.wav \\
        --reference /work/evalkit/out/corpus/public/voices/ref_f3/clip1.wav
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import Stack  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


def _env(tmp: Path, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVER_", "DJANGO_", "GPT_SOVITS"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "coverproject.settings.dev",
        "DATABASE_URL": args.database_url or f"sqlite:///{tmp / 'db.sqlite3'}",
        "REDIS_URL": args.redis_url, "CHANNEL_PREFIX": f"bench{os.getpid()}",
        "COVER_VAR_DIR": str(tmp), "COVER_MEDIA_ROOT": str(tmp / "media"), "COVER_WORK_ROOT": str(tmp / "work"),
        "COVER_STEM_CACHE": "true" if args.stem_cache else "false", "COVER_WORKER_WITH_SCHEDULER": "false",
        "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING",
    })
    return env


def _manage(env: dict, *argv: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"manage.py {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def run(workers: int, args) -> dict:
    import redis

    conn = redis.Redis.from_url(args.redis_url)
    if conn.dbsize() and not args.flush:
        raise SystemExit(f"{args.redis_url} is not empty; pass another --redis-url or --flush")
    conn.flushdb()
    with tempfile.TemporaryDirectory(prefix="throughput-") as d:
        tmp = Path(d)
        env = _env(tmp, args)
        _manage(env, "migrate", "-v", "0")
        raw = _manage(env, "shell", "-c", "from covers.models import APIKey; print(APIKey.objects.create_key("
                                          "name='bench')[1])").strip().splitlines()[-1]
        os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "REDIS_URL")})
        import django
        django.setup()  # Stack watches the workers register through covers.queue
        stack = Stack(tmp, env)
        procs = []
        try:
            stack.start()  # daphne + the first worker
            procs.append(stack.worker)
            for i in range(1, workers):
                procs.append(stack._spawn([sys.executable, "manage.py", "rqworker", "cover"], f"worker-extra{i}.log"))
            time.sleep(2)
            head = {"X-API-Key": raw}
            t0 = time.monotonic()
            ids = []
            for _ in range(args.jobs):
                with open(args.song, "rb") as s, open(args.reference, "rb") as r:
                    resp = requests.post(stack.base + "/api/v1/cover/jobs", headers=head, timeout=60,
                                         files={"song": ("song.wav", s), "reference_voice": ("ref.wav", r)})
                resp.raise_for_status()
                ids.append(resp.json()["job_id"])
            bodies: dict[str, dict] = {}
            while len(bodies) < len(ids):
                for job_id in ids:
                    if job_id in bodies:
                        continue
                    b = requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}", headers=head, timeout=30).json()
                    if b["status"] in TERMINAL:
                        bodies[job_id] = b
                        b["_done"] = time.monotonic() - t0
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit(f"timed out after {args.timeout} s\n{stack.logs()}")
                time.sleep(0.5)
            wall = max(b["_done"] for b in bodies.values())
        finally:
            for p in procs[1:]:
                if p.poll() is None:
                    p.terminate()
            stack.stop()
    ok = [b for b in bodies.values() if b["status"] == "succeeded"]
    per_job = [sum((b.get("timings") or {}).values()) for b in ok]
    return {"workers": workers, "jobs": len(ids), "succeeded": len(ok), "wall_seconds": round(wall, 1),
            "jobs_per_hour": round(len(ok) / wall * 3600, 1),
            "median_job_seconds": round(statistics.median(per_job), 1) if per_job else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--song", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a Redis DB this bench may flush")
    ap.add_argument("--flush", action="store_true", help="flush --redis-url even when it holds keys")
    ap.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    ap.add_argument("--stem-cache", action="store_true", help="leave the stem cache on (jobs 2..N reuse stems)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    load = os.getloadavg()
    results = []
    for w in args.workers:
        r = run(w, args)
        r["load_before"] = round(load[0], 2)
        load = os.getloadavg()
        r["load_after"] = round(load[0], 2)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n| workers | jobs | wall (s) | jobs/hour | median job (s) | load avg (1 min) |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['succeeded']}/{r['jobs']} | {r['wall_seconds']} | {r['jobs_per_hour']} | "
              f"{r['median_job_seconds']} | {r['load_before']} -> {r['load_after']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
