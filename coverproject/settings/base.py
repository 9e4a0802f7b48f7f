"""Settings shared by every environment. Everything a deployment changes comes from the
environment (django-environ); every value has a working default for a single machine."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parents[2]
env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(str(BASE_DIR / ".env"))

VAR_DIR = Path(env("COVER_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-dev-key-change-me-in-production-0123456789")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",  # first: `runserver` serves the ASGI app (HTTP + WebSocket)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI files served locally (no CDN)
    "django_rq",
    "channels",
    "covers",
    "axes",  # login throttling (AXES_* below)
]

MIDDLEWARE = [
    "covers.exceptions.ApiJsonErrorsMiddleware",  # first: JSON errors on API paths whatever DEBUG is; bad Host -> 400
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last (django-axes): a locked-out login gets its 429 answer
]

# --- login throttling (django-axes): the page's and the admin's logins ---
# AxesStandaloneBackend first: it refuses a locked-out username or address before any password
# check (a correct password is refused too while locked). Failures are counted in the database
# (axes' AccessAttempt, visible in the admin) per username and per client address, either one
# trips the lock. The address is REMOTE_ADDR (X-Forwarded-For is not trusted: behind a proxy set
# AXES_IPWARE_* and install django-ipware). `manage.py axes_reset` unlocks everyone.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("COVER_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("COVER_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "covers.auth.login_locked_out_response"  # 429 page, or JSON on API/JSON requests

ROOT_URLCONF = "coverproject.urls"
ASGI_APPLICATION = "coverproject.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database: DATABASE_URL (postgres://... or sqlite:///...), default a SQLite file under var/ ---
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the workers write the same file: wait for locks instead of failing,
    # take the write lock at BEGIN (no lock upgrades -> no deadlock errors), WAL for readers.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE",
         "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"})
else:
    # PostgreSQL: a connection pool per process (psycopg_pool through Django's "pool" option).
    # Persistent connections (CONN_MAX_AGE) are per thread, and under ASGI every request runs in
    # a fresh thread: 50 concurrent status reads left hundreds of idle connections behind and the
    # server answered "too many clients" (bench/api_bench.py). The pool bounds each process at
    # DATABASE_POOL_MAX_SIZE connections and checks a connection before lending it (a restarted
    # server costs no failed request). DATABASE_POOL=false (e.g. behind PgBouncer in transaction
    # mode) falls back to DATABASE_CONN_MAX_AGE.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if env.bool("DATABASE_POOL", default=True):
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # required by Django with a pool
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=1),
            "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),  # s to wait for a connection
        }
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
COVER_SERVE_STATIC = env.bool("COVER_SERVE_STATIC", default=True)
STATIC_ROOT = Path(env("COVER_STATIC_ROOT", default=str(VAR_DIR / "static")))

# --- files: inputs, stems and results go through Django's storage API ---
# COVER_STORAGE_BACKEND=storages.backends.s3.S3Storage (+ AWS_* variables) puts them on S3.
MEDIA_ROOT = Path(env("COVER_MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": env("COVER_STORAGE_BACKEND",
                               default="django.core.files.storage.FileSystemStorage")},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
for _name in ("AWS_STORAGE_BUCKET_NAME", "AWS_S3_ENDPOINT_URL", "AWS_S3_REGION_NAME",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_LOCATION", "AWS_S3_ADDRESSING_STYLE",
              "AWS_S3_SIGNATURE_VERSION", "AWS_S3_CUSTOM_DOMAIN", "AWS_DEFAULT_ACL"):
    if env(_name, default=None):
        globals()[_name] = env(_name)
# Scratch folders for running jobs (always local disk).
COVER_WORK_ROOT = Path(env("COVER_WORK_ROOT", default=str(VAR_DIR / "work")))

# --- Redis, RQ, Channels ---
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
# `manage.py serve`: daphne processes sharing the listening socket (one core each for HTTP).
COVER_WEB_PROCESSES = env.int("COVER_WEB_PROCESSES", default=1)
COVER_QUEUE_NAME = env("COVER_QUEUE_NAME", default="cover")
COVER_JOB_TIMEOUT = env.int("COVER_JOB_TIMEOUT", default=1800)  # seconds per job (RQ's default: 180)
COVER_RESULT_TTL_HOURS = env.float("COVER_RESULT_TTL_HOURS", default=24)
# Per-stage limits in seconds, enforced by the worker's watchdog thread even when native code hangs
# (covers.worker: the job fails "timeout in <stage>" and the worker process exits to be restarted).
# COVER_STAGE_TIMEOUTS="infer=600,mix=60" replaces the defaults; 0 turns a stage's limit off.
COVER_STAGE_TIMEOUTS = {"preprocess": 300.0, "separate": 1200.0, "infer": 1200.0, "mix": 300.0, "finalize": 300.0}
if env("COVER_STAGE_TIMEOUTS", default=""):
    COVER_STAGE_TIMEOUTS = {k.strip(): float(v) for k, v in (
        item.split("=", 1) for item in env("COVER_STAGE_TIMEOUTS").replace(";", ",").split(",") if "=" in item)}
RQ_QUEUES = {
    COVER_QUEUE_NAME: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT},
}
if COVER_QUEUE_NAME != "default":
    RQ_QUEUES["default"] = {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT}
# Queues per device class. COVER_ENGINE_QUEUES routes engines to queues, e.g.
# "demucs=cover-gpu,gpt-sovits-api=cover-gpu,gpt-sovits-command=cover-gpu"; a job goes to the queue
# its engines need (several: the first of them in COVER_QUEUES, so list the most capable class
# first), a job whose engines are not routed to COVER_QUEUE_NAME. Unset: everything on `cover`.
COVER_ENGINE_QUEUES = env.dict("COVER_ENGINE_QUEUES", default={})
COVER_QUEUES = list(dict.fromkeys(env.list("COVER_QUEUES", default=[]) + list(COVER_ENGINE_QUEUES.values())
                                  + [COVER_QUEUE_NAME]))
for _queue in COVER_QUEUES:
    RQ_QUEUES.setdefault(_queue, {"URL": REDIS_URL, "DEFAULT_TIMEOUT": COVER_JOB_TIMEOUT})
# Separated stems are cached in storage under stem-cache/<key>/ (covers.stem_cache) for
# COVER_RESULT_TTL_HOURS: a second cover of the same song skips the separator.
COVER_STEM_CACHE = env.bool("COVER_STEM_CACHE", default=True)
# Webhook retries (covers.webhooks); the cover worker listens to this queue after its own.
RQ_QUEUES["cover-webhooks"] = {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 60}
# `manage.py rqworker cover` uses this class with no flags: no fork per job (engines stay
# loaded), a heartbeat thread during jobs, and the reconciler for dead workers.
RQ = {"WORKER_CLASS": "covers.worker.CoverWorker"}
RQ_SHOW_ADMIN_LINK = True
# Seconds without a heartbeat after which a running job's worker counts as dead.
COVER_WORKER_HEARTBEAT_SECONDS = env.int("COVER_WORKER_HEARTBEAT_SECONDS", default=10)
COVER_WORKER_DEAD_AFTER_SECONDS = env.int("COVER_WORKER_DEAD_AFTER_SECONDS", default=60)
# 15 s: with a 60 s dead-after and 10 s heartbeats, a killed worker's job fails within ~85 s (README guarantee 3)
COVER_RECONCILE_INTERVAL_SECONDS = env.int("COVER_RECONCILE_INTERVAL_SECONDS", default=15)
# A queued row whose RQ job is missing from Redis for this long gets re-enqueued once, then failed.
COVER_QUEUED_GRACE_SECONDS = env.int("COVER_QUEUED_GRACE_SECONDS", default=30)
# Redis must run with maxmemory-policy noeviction (covers.checks, covers.E001): rqworker and daphne
# refuse to start otherwise. false (development only) turns the refusal into a warning.
COVER_REDIS_REQUIRE_NOEVICTION = env.bool("COVER_REDIS_REQUIRE_NOEVICTION", default=True)

# Options for each channels-redis host. redis-py 8 reads with a 5 s socket timeout by default, which
# tears down every consumer whose BZPOPMIN waits 5 s with nothing to read (close 1011; see
# django/channels_redis#422): no socket timeout. Its asyncio pool also allows only 100 connections
# by default: 200 WebSockets connecting at once (each group_add borrows one) failed with
# MaxConnectionsError (bench/ws_bench.py).
CHANNEL_REDIS_HOST_OPTIONS = {"socket_timeout": None,
                              "max_connections": env.int("CHANNEL_REDIS_MAX_CONNECTIONS", default=2000)}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": env("CHANNEL_REDIS_URL", default=REDIS_URL), **CHANNEL_REDIS_HOST_OPTIONS}],
                   "prefix": env("CHANNEL_PREFIX", default="asgi")},
    },
}

# --- pipeline engines and limits ---
COVER_SEPARATOR = env("COVER_SEPARATOR", default="spectral")
COVER_CONVERTER = env("COVER_CONVERTER", default="world")
COVER_DEVICE = env("COVER_DEVICE", default="")  # "" = CUDA when present, else CPU
GPT_SOVITS_PYTHON = env("GPT_SOVITS_PYTHON", default="")
GPT_SOVITS_PROJECT_ROOT = env("GPT_SOVITS_PROJECT_ROOT", default="")
GPT_SOVITS_API_URL = env("GPT_SOVITS_API_URL", default="")  # e.g. http://127.0.0.1:9880 (api_v2.py)
COVER_UVR_MODEL = env("COVER_UVR_MODEL", default="")
COVER_SEPARATE_CMD_TEMPLATE = env("COVER_SEPARATE_CMD_TEMPLATE", default="")
COVER_INFER_CMD_TEMPLATE = env("COVER_INFER_CMD_TEMPLATE", default="")

COVER_MAX_UPLOAD_MB = env.float("COVER_MAX_UPLOAD_MB", default=50)  # per file
# Upload headers are read in a child process (a decoder crash or hang ends the child: 422), with
# a time and an address-space limit.
COVER_PROBE_ISOLATED = env.bool("COVER_PROBE_ISOLATED", default=True)
COVER_PROBE_TIMEOUT_SECONDS = env.float("COVER_PROBE_TIMEOUT_SECONDS", default=10.0)
COVER_PROBE_MEMORY_MB = env.int("COVER_PROBE_MEMORY_MB", default=1024)
# The worker decodes each job's inputs the same way (inference.audio.decode_isolated): a decoder
# crash fails the job (corrupt_audio), never the worker; limits cover the header and the decode.
COVER_DECODE_ISOLATED = env.bool("COVER_DECODE_ISOLATED", default=True)
COVER_DECODE_TIMEOUT_SECONDS = env.float("COVER_DECODE_TIMEOUT_SECONDS", default=120.0)
COVER_DECODE_MEMORY_MB = env.int("COVER_DECODE_MEMORY_MB", default=4096)
# Limits a new API key starts with (create_api_key, the admin's add form); staff change them per
# key in the admin (an empty field there means no limit beyond the service's).
COVER_KEY_DEFAULT_MAX_CONCURRENT = env.int("COVER_KEY_DEFAULT_MAX_CONCURRENT", default=4)
COVER_KEY_DEFAULT_JOBS_PER_DAY = env.int("COVER_KEY_DEFAULT_JOBS_PER_DAY", default=200)
COVER_KEY_DEFAULT_MAX_UPLOAD_MB = env.float("COVER_KEY_DEFAULT_MAX_UPLOAD_MB", default=50)
COVER_KEY_DEFAULT_MAX_SONG_SECONDS = env.float("COVER_KEY_DEFAULT_MAX_SONG_SECONDS", default=600)
COVER_MAX_SONG_SECONDS = env.float("COVER_MAX_SONG_SECONDS", default=600)
COVER_MIN_SONG_SECONDS = env.float("COVER_MIN_SONG_SECONDS", default=1)
COVER_MIN_REFERENCE_SECONDS = env.float("COVER_MIN_REFERENCE_SECONDS", default=3)
COVER_MAX_REFERENCE_SECONDS = env.float("COVER_MAX_REFERENCE_SECONDS", default=60)
COVER_MIN_SAMPLE_RATE = env.int("COVER_MIN_SAMPLE_RATE", default=8000)
COVER_MAX_SAMPLE_RATE = env.int("COVER_MAX_SAMPLE_RATE", default=192000)
COVER_MAX_CHANNELS = env.int("COVER_MAX_CHANNELS", default=2)
COVER_MAX_TEXT_CHARS = 5000
# Whole request body limit: two files plus form fields. Bigger requests get 413 before parsing.
COVER_MAX_REQUEST_BYTES = int(2 * COVER_MAX_UPLOAD_MB * 1024 * 1024 + 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024  # bigger uploads spool to a temp file (probed by path)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024   # non-file form fields
# Progress writes per job are throttled to at most one per this many seconds (stage changes always pass).
COVER_PROGRESS_MIN_INTERVAL = env.float("COVER_PROGRESS_MIN_INTERVAL", default=0.25)
COVER_CANCEL_POLL_SECONDS = env.float("COVER_CANCEL_POLL_SECONDS", default=0.3)
# last_used_at on API keys is written at most once per this many seconds per key.
COVER_KEY_LAST_USED_INTERVAL = env.int("COVER_KEY_LAST_USED_INTERVAL", default=60)
# Open WebSockets re-check their key/user this often (a key's expiry date passing is no event;
# revoking, deleting, deactivating and logging out close the sockets at once).
COVER_WS_RECHECK_SECONDS = env.float("COVER_WS_RECHECK_SECONDS", default=5)

# --- API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "covers.auth.APIKeyAuthentication",
        "covers.auth.StaffSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["covers.auth.IsCaller"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "covers.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Song cover API",
    "DESCRIPTION": "Upload a song and a reference voice; get the song re-sung in that voice.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- staff admin: voice-model registry, periodic cleanup ---
# Registered models' files: relative paths are under COVER_MODELS_ROOT; absolute ones must lie
# inside COVER_MODELS_ROOT, GPT_SOVITS_PROJECT_ROOT or one of COVER_MODELS_ALLOWED_ROOTS.
COVER_MODELS_ROOT = Path(env("COVER_MODELS_ROOT", default=str(VAR_DIR / "models")))
COVER_MODELS_ALLOWED_ROOTS = env.list("COVER_MODELS_ALLOWED_ROOTS", default=[])
# RVC voices (engine "rvc"): the content encoder every voice shares (the community's fairseq
# hubert_base.pt, a ContentVec .pt, or a transformers folder), RMVPE for pitch when its file exists
# (otherwise the bundled tracker), and how many voice models a worker keeps loaded (LRU).
COVER_RVC_CONTENT_ENCODER = env("COVER_RVC_CONTENT_ENCODER", default=str(COVER_MODELS_ROOT / "hubert_base.pt"))
COVER_RVC_RMVPE = env("COVER_RVC_RMVPE", default=str(COVER_MODELS_ROOT / "rmvpe.pt"))
COVER_RVC_CACHE_SIZE = env.int("COVER_RVC_CACHE_SIZE", default=2)
# UVR-family separators (engine "uvr", python-audio-separator): the folder holding COVER_UVR_MODEL
# and the model-data files (vr_model_data.json, mdx_model_data.json, YAML configs). Nothing is
# ever downloaded: a missing file is an error naming it.
COVER_UVR_MODEL_DIR = Path(env("COVER_UVR_MODEL_DIR", default=str(COVER_MODELS_ROOT / "uvr")))
# The cleanup job re-schedules itself through RQ's scheduler every this many seconds; the cover
# worker runs that scheduler itself (COVER_WORKER_WITH_SCHEDULER), so no system cron is needed.
COVER_CLEANUP_INTERVAL_SECONDS = env.int("COVER_CLEANUP_INTERVAL_SECONDS", default=600)
COVER_WORKER_WITH_SCHEDULER = env.bool("COVER_WORKER_WITH_SCHEDULER", default=True)

# --- health and metrics (covers/health.py) ---
# /readyz fails when the media root (the work folder with remote storage) has this little free.
COVER_MIN_FREE_DISK_MB = env.float("COVER_MIN_FREE_DISK_MB", default=1024)
# A worker counts as live while its RQ heartbeat is younger than this (an idle rq worker beats
# about every worker_ttl = 420 s; RQ drops its key 60 s after that).
COVER_READY_WORKER_MAX_AGE_SECONDS = env.int("COVER_READY_WORKER_MAX_AGE_SECONDS", default=480)
# /metrics answers only "Authorization: Bearer <token>"; empty: /metrics is off (404).
COVER_METRICS_TOKEN = env("COVER_METRICS_TOKEN", default="")
# Measure each job's pitch accuracy and speaker similarity after infer (inference.quality; on a
# CPU it costs about as much again as the world converter).
COVER_QUALITY_REPORT = env.bool("COVER_QUALITY_REPORT", default=True)

# --- webhooks (covers.webhooks) ---
# Allow webhook URLs on private/loopback/link-local addresses (tests, trusted networks only).
COVER_WEBHOOK_ALLOW_PRIVATE = env.bool("COVER_WEBHOOK_ALLOW_PRIVATE", default=False)
# Ports a webhook URL may name (comma list; "*" = any). Others are refused at creation.
COVER_WEBHOOK_ALLOWED_PORTS = env.list("COVER_WEBHOOK_ALLOWED_PORTS", default=["80", "443"])
COVER_WEBHOOK_TIMEOUT_SECONDS = env.float("COVER_WEBHOOK_TIMEOUT_SECONDS", default=10)
COVER_WEBHOOK_PROGRESS_INTERVAL = env.float("COVER_WEBHOOK_PROGRESS_INTERVAL", default=0.5)
COVER_WEBHOOK_RETRY_BASE_SECONDS = env.float("COVER_WEBHOOK_RETRY_BASE_SECONDS", default=10)
COVER_WEBHOOK_RETRY_MAX_SECONDS = env.float("COVER_WEBHOOK_RETRY_MAX_SECONDS", default=3600)
COVER_WEBHOOK_RETRY_HOURS = env.float("COVER_WEBHOOK_RETRY_HOURS", default=24)
COVER_WEBHOOK_THREADS = env.int("COVER_WEBHOOK_THREADS", default=4)
# Idempotency-Key records live this long; Prefer: wait=N accepts N up to this.
COVER_IDEMPOTENCY_HOURS = env.float("COVER_IDEMPOTENCY_HOURS", default=24)
COVER_MAX_PREFER_WAIT_SECONDS = 60
