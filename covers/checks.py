"""System checks. ``covers.E001``: Redis must not evict keys (maxmemory-policy noeviction).

An evicting Redis silently drops queued RQ jobs, cancel flags and worker heartbeats, so a job
accepted with 201 could vanish. The check runs with every management command that runs system
checks (``rqworker`` included, which then refuses to start) and ``check --deploy``; the ASGI
application (daphne) calls :func:`require_redis_noeviction` at import. With
COVER_REDIS_REQUIRE_NOEVICTION=false (development only) it is a warning instead.
A Redis that is unreachable or forbids CONFIG GET (some managed services) is not judged here:
/readyz reports reachability, and managed services document their own eviction policy.
"""
from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def redis_eviction_problem(url: str | None = None) -> str | None:
    """A sentence when the Redis at ``url`` (default: the queue's) may evict keys, else None."""
    import redis

    from .queue import redis_url

    url = url or redis_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        policy = (client.config_get("maxmemory-policy") or {}).get("maxmemory-policy")
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return None
    finally:
        client.close()
    if policy in (None, "noeviction"):
        return None
    where = url.split("@")[-1]  # never print a password
    return (f"Redis at {where} has maxmemory-policy={policy}; the service needs noeviction (an evicted key "
            f"loses queued jobs that were accepted). Set 'maxmemory-policy noeviction' in redis.conf "
            f"(or CONFIG SET maxmemory-policy noeviction).")


@checks.register("cover", deploy=False)
def check_redis_noeviction(app_configs=None, **kwargs):
    problem = redis_eviction_problem()
    if problem is None:
        return []
    if getattr(settings, "COVER_REDIS_REQUIRE_NOEVICTION", True):
        return [checks.Error(problem, id="covers.E001")]
    return [checks.Warning(problem + " (allowed: COVER_REDIS_REQUIRE_NOEVICTION=false)", id="covers.W001")]


def require_redis_noeviction() -> None:
    """For servers that run no system checks (daphne): refuse to start, with the reason."""
    for message in check_redis_noeviction():
        if message.level >= checks.ERROR:
            raise ImproperlyConfigured(f"{message.id}: {message.msg}")
