"""pytest settings: a separate Redis DB, media in a temp folder (tests override it), fast hashing."""
import os
from pathlib import Path

from .base import *  # noqa: F401,F403
from .base import CHANNEL_REDIS_HOST_OPTIONS, COVER_JOB_TIMEOUT, COVER_QUEUE_NAME, COVER_QUEUES, DATABASES, VAR_DIR, env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Only TEST_REDIS_URL is read (never REDIS_URL): tests flush this DB.
REDIS_URL = env("TEST_REDIS_URL", default="redis://127.0.0.1:6379/15")
RQ_QUEUES = {
    COVER_QUEUE_NAME: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT},
    "cover-webhooks": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 60},
}
for _queue in COVER_QUEUES:  # queues per device class (base.py), on the test Redis DB
    RQ_QUEUES.setdefault(_queue, {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT})
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, **CHANNEL_REDIS_HOST_OPTIONS}], "prefix": "asgitest"},
    },
}
MEDIA_ROOT = Path(env("COVER_MEDIA_ROOT", default=str(VAR_DIR / "test-media")))
COVER_WORK_ROOT = Path(env("COVER_WORK_ROOT", default=str(VAR_DIR / "test-work")))
# The test database must be visible to the end-to-end test's daphne and worker subprocesses:
# SQLite gets a file (per pytest process, so parallel runs don't collide), PostgreSQL a named DB.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": env("TEST_DB_NAME", default=str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3"))}
else:
    DATABASES["default"]["TEST"] = {"NAME": env("TEST_DB_NAME", default=f"test_{DATABASES['default']['NAME']}")}
COVER_KEY_LAST_USED_INTERVAL = 0
# django-axes (login throttling, base.py) stays on in tests: its failure counts live in the test
# database, so each test starts from none (rolled back or flushed after every test).
AXES_ENABLED = True
