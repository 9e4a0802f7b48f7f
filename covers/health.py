"""Probes and metrics for operators: ``/healthz``, ``/readyz``, ``/metrics``.

- ``/healthz``: the process answers (no dependency is touched). Always 200 while it runs.
- ``/readyz``: the database answers, Redis answers, at least one live RQ worker listens on a
  cover queue (registered in Redis with a heartbeat no older than
  COVER_READY_WORKER_MAX_AGE_SECONDS, and the queues not suspended), and the media root has more
  than COVER_MIN_FREE_DISK_MB free. 200 when all pass, else 503; the JSON holds the status only,
  and each check's details for staff or with ``Authorization: Bearer <COVER_METRICS_TOKEN>``.
- ``/metrics``: Prometheus text format behind ``Authorization: Bearer <COVER_METRICS_TOKEN>``
  (404 while no token is configured, 401 without the right one): queue depth, running jobs,
  jobs by status, live workers, and per-stage / whole-job / queue-wait histograms over the
  succeeded jobs in the database (computed on each scrape: the database is the truth, and every
  web process answers the same).

Plain Django views (not DRF): probes carry no API key and must stay cheap.
"""
from __future__ import annotations

import hmac
import logging
import os
import shutil
import time
from datetime import datetime, timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .models import CoverJob

log = logging.getLogger(__name__)

_STARTED = time.time()
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
WAIT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
RQ_DEFAULT_WORKER_TTL = 420   # rq.defaults.DEFAULT_WORKER_TTL: an idle worker beats about this often


def _setting(name: str, default):
    return getattr(settings, name, default)


def cover_queue_names() -> list[str]:
    """The RQ queues cover jobs go to: COVER_QUEUES (queues per device class) when set, else
    COVER_QUEUE_NAME (never the webhook-retry queue)."""
    names = list(getattr(settings, "COVER_QUEUES", None) or []) or [settings.COVER_QUEUE_NAME]
    names = [n for n in names if n != "cover-webhooks"]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# checks: each returns a dict with "ok" and details; never raises
# --------------------------------------------------------------------------------------------
def _timed(fn):
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a check reports, never raises
        out = {"ok": False, "error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
    out["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return out


def check_database() -> dict:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    return {"ok": True, "vendor": connection.vendor}


def check_redis() -> dict:
    from .queue import redis_connection
    redis_connection().ping()
    return {"ok": True}


def live_workers(max_age: float | None = None) -> tuple[list[dict], bool]:
    """Workers registered in Redis for the cover queues, each with its heartbeat age and whether
    it counts as live; and whether RQ is suspended."""
    from rq import Queue, Worker
    from rq.suspension import is_suspended

    from .queue import redis_connection

    conn = redis_connection()
    if max_age is None:
        max_age = float(_setting("COVER_READY_WORKER_MAX_AGE_SECONDS", RQ_DEFAULT_WORKER_TTL + 60))
    now = datetime.now(dt_timezone.utc)
    seen: dict[str, dict] = {}
    for name in cover_queue_names():
        for w in Worker.all(queue=Queue(name, connection=conn)):
            hb = w.last_heartbeat
            if hb is not None and hb.tzinfo is None:
                hb = hb.replace(tzinfo=dt_timezone.utc)
            age = (now - hb).total_seconds() if hb is not None else None
            entry = seen.setdefault(w.name, {
                "name": w.name, "state": str(w.get_state()), "hostname": w.hostname, "pid": w.pid,
                "queues": [], "heartbeat_age_s": None if age is None else round(age, 1),
                "live": age is not None and age <= max_age,
            })
            entry["queues"].append(name)
    return list(seen.values()), bool(is_suspended(conn))


def check_workers() -> dict:
    workers, suspended = live_workers()
    live = [w for w in workers if w["live"]]
    ok = bool(live) and not suspended
    out = {"ok": ok, "live": len(live), "registered": len(workers), "queues": cover_queue_names(),
           "suspended": suspended, "workers": workers}
    if not live:
        out["error"] = "no live worker listens on the cover queue"
    elif suspended:
        out["error"] = "RQ is suspended (rq resume)"
    return out


def _existing(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk() -> dict:
    from django.core.files.storage import FileSystemStorage, default_storage

    threshold = float(_setting("COVER_MIN_FREE_DISK_MB", 1024))
    root = Path(settings.MEDIA_ROOT)
    if not isinstance(getattr(default_storage, "_wrapped", default_storage), FileSystemStorage):
        # remote storage (S3): the local disk that matters is the work folder's
        root = Path(settings.COVER_WORK_ROOT)
    usage = shutil.disk_usage(_existing(root))
    free_mb = usage.free / (1024 * 1024)
    out = {"ok": free_mb > threshold, "path": str(root), "free_mb": round(free_mb, 1),
           "total_mb": round(usage.total / (1024 * 1024), 1), "min_free_mb": threshold}
    if not out["ok"]:
        out["error"] = f"only {free_mb:.0f} MB free (need more than {threshold:.0f} MB)"
    return out


CHECKS = {"database": check_database, "redis": check_redis, "workers": check_workers, "disk": check_disk}


def readiness() -> tuple[bool, dict]:
    checks = {}
    for name, fn in CHECKS.items():
        if name == "workers" and not checks.get("redis", {}).get("ok"):
            checks[name] = {"ok": False, "error": "Redis is unreachable", "ms": 0.0}
            continue
        checks[name] = _timed(fn)
    return all(c["ok"] for c in checks.values()), checks


# --------------------------------------------------------------------------------------------
# views
# --------------------------------------------------------------------------------------------
@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok", "pid": os.getpid(), "uptime_s": round(time.time() - _STARTED, 1)})


@never_cache
@require_GET
def readyz(request):
    """200/503 with the status for anyone (a load balancer's probe); each check's details (worker
    names, hosts and pids, the media path, disk sizes) only for staff or with the metrics token."""
    ok, checks = readiness()
    body = {"status": "ready" if ok else "unavailable"}
    if _may_see_details(request):
        body["checks"] = checks
    return JsonResponse(body, status=200 if ok else 503)


def _may_see_details(request) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return True
    return bool(_setting("COVER_METRICS_TOKEN", "")) and _authorized(request)


def _authorized(request) -> bool:
    token = _setting("COVER_METRICS_TOKEN", "") or ""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and bool(given) and hmac.compare_digest(given.strip().encode(),
                                                                              token.encode())


@never_cache
@require_GET
def metrics(request):
    if not _setting("COVER_METRICS_TOKEN", ""):
        return HttpResponse("metrics are disabled (set COVER_METRICS_TOKEN)\n", status=404,
                            content_type="text/plain")
    if not _authorized(request):
        resp = HttpResponse("a bearer token is required\n", status=401, content_type="text/plain")
        resp["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return resp
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoverCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------------------
# the collector
# --------------------------------------------------------------------------------------------
def _histogram(values, buckets) -> tuple[list[tuple[str, float]], float]:
    counts = [0] * len(buckets)
    total = 0.0
    for v in values:
        total += v
        for i, b in enumerate(buckets):
            if v <= b:
                counts[i] += 1
    from prometheus_client.utils import floatToGoString

    out = [(floatToGoString(b), float(c)) for b, c in zip(buckets, counts)]
    out.append(("+Inf", float(len(values))))
    return out, total


class CoverCollector:
    """Builds the metric families from the database and Redis on each scrape."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        from django.db.models import Count

        by_status = dict(CoverJob.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        g = GaugeMetricFamily("cover_jobs", "Cover jobs in the database by status.", labels=["status"])
        for status in CoverJob.Status.values:
            g.add_metric([status], float(by_status.get(status, 0)))
        yield g
        yield GaugeMetricFamily("cover_jobs_running", "Cover jobs running now.",
                                value=float(by_status.get(CoverJob.Status.RUNNING, 0)))

        depth = GaugeMetricFamily("cover_queue_depth", "Jobs waiting in the RQ queue.", labels=["queue"])
        workers_g = GaugeMetricFamily("cover_workers_live", "RQ workers with a fresh heartbeat on the cover queues.")
        up = GaugeMetricFamily("cover_redis_up", "1 when Redis answered this scrape.")
        try:
            from rq import Queue

            from .queue import redis_connection
            conn = redis_connection()
            for name in cover_queue_names():
                depth.add_metric([name], float(Queue(name, connection=conn).count))
            workers, _ = live_workers()
            workers_g.add_metric([], float(sum(1 for w in workers if w["live"])))
            up.add_metric([], 1.0)
        except Exception as exc:
            log.warning("metrics: Redis unavailable (%s)", exc)
            up.add_metric([], 0.0)
        yield depth
        yield workers_g
        yield up

        # histograms over the succeeded jobs kept in the database
        per_stage: dict[str, list[float]] = {s: [] for s in CoverJob.Stage.values}
        totals: list[float] = []
        waits: list[float] = []
        rows = (CoverJob.objects.filter(status=CoverJob.Status.SUCCEEDED)
                .values_list("timings", "created_at", "enqueued_at", "started_at").iterator(chunk_size=2000))
        for timings, created, enqueued, started in rows:
            if isinstance(timings, dict):
                tot = 0.0
                for stage, sec in timings.items():
                    try:
                        sec = float(sec)
                    except (TypeError, ValueError):
                        continue
                    per_stage.setdefault(stage, []).append(sec)
                    tot += sec
                if timings:
                    totals.append(tot)
            since = enqueued or created
            if since and started:
                waits.append(max(0.0, (started - since).total_seconds()))
        h = HistogramMetricFamily("cover_stage_seconds", "Seconds per pipeline stage of succeeded jobs.",
                                  labels=["stage"])
        for stage, values in per_stage.items():
            buckets, total = _histogram(values, STAGE_BUCKETS)
            h.add_metric([stage], buckets, total)
        yield h
        buckets, total = _histogram(totals, STAGE_BUCKETS)
        yield HistogramMetricFamily("cover_job_seconds", "Pipeline seconds (all stages) of succeeded jobs.",
                                    buckets=buckets, sum_value=total)
        buckets, total = _histogram(waits, WAIT_BUCKETS)
        yield HistogramMetricFamily("cover_queue_wait_seconds", "Seconds from enqueue (else creation) to start of succeeded jobs.",
                                    buckets=buckets, sum_value=total)
        warned = CoverJob.objects.filter(status=CoverJob.Status.SUCCEEDED, quality_warning=True).count()
        yield GaugeMetricFamily("cover_jobs_quality_warning", "Succeeded jobs flagged with a quality warning.",
                                value=float(warned))
