"""pytest settings: a separate Redis DB, media in a temp folder (tests override it), fast hashing."""
from .base import *  # noqa: F401,F403
from .base import COVER_JOB_TIMEOUT, COVER_QUEUE_NAME, VAR_DIR, env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests never touch DB 0; each test flushes this DB.
# Only TEST_REDIS_URL is read (never REDIS_URL): tests flush this DB.
REDIS_URL = env("TEST_REDIS_URL", default="redis://127.0.0.1:6379/15")
RQ_QUEUES = {
    COVER_QUEUE_NAME: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT},
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "asgitest"},
    },
}
MEDIA_ROOT = VAR_DIR / "test-media"
COVER_WORK_ROOT = VAR_DIR / "test-work"
COVER_KEY_LAST_USED_INTERVAL = 0
