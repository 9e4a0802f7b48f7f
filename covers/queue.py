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


def cover_queue() -> Queue:
    return Queue(settings.COVER_QUEUE_NAME, connection=redis_connection(),
                 default_timeout=settings.COVER_JOB_TIMEOUT)


def cancel_flag_key(job_id) -> str:
    return f"cover:cancel:{job_id}"
