"""The RQ queue and Redis connection the service uses (one cached client per URL, short timeouts
so an unreachable Redis answers 503 quickly instead of hanging a request)."""
from __future__ import annotations

import threading

import redis
from django.conf import settings
from rq import Queue

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()

JOB_FUNC = "covers.jobs.run_cover_job"
FAILURE_CALLBACK = "covers.jobs.on_rq_failure"


def redis_url() -> str:
    return settings.RQ_QUEUES[settings.COVER_QUEUE_NAME]["URL"]


def redis_connection() -> redis.Redis:
    url = redis_url()
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10,
                                          health_check_interval=30)
            _clients[url] = client
        return client


def cover_queue(name: str | None = None) -> Queue:
    """The queue ``name`` (one of COVER_QUEUES; default COVER_QUEUE_NAME, where periodic jobs go)."""
    return Queue(name or settings.COVER_QUEUE_NAME, connection=redis_connection(),
                 default_timeout=settings.COVER_JOB_TIMEOUT)


def queue_for_engines(*engines: str | None) -> str:
    """The queue a job using ``engines`` goes to (queues per device class).

    COVER_ENGINE_QUEUES maps engine names to queues (e.g. demucs -> cover-gpu); a job whose
    engines map to several queues goes to the first of them in COVER_QUEUES (the most capable
    class is listed first); a job whose engines are not routed goes to COVER_QUEUE_NAME, so
    with no routing configured ``rqworker cover`` runs everything."""
    routes = settings.COVER_ENGINE_QUEUES or {}
    wanted = {routes[e] for e in engines if e and e in routes}
    if not wanted:
        return settings.COVER_QUEUE_NAME
    order = list(settings.COVER_QUEUES)
    return min(wanted, key=lambda q: (order.index(q) if q in order else len(order), q))


def queue_for_job(job) -> str:
    """The queue for a CoverJob: its separator (unless the client brought stems) and converter."""
    p = job.parameters or {}
    separator = None if p.get("stems") or not job.song else (p.get("separator") or settings.COVER_SEPARATOR)
    return queue_for_engines(separator, p.get("converter") or settings.COVER_CONVERTER)


def cancel_flag_key(job_id) -> str:
    return f"cover:cancel:{job_id}"
