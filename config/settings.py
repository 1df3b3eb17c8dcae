"""Natter settings: one module, driven by the environment.

With neither DATABASE_URL nor REDIS_URL set, Natter runs as the embedded default
(SQLite, the in-memory channel layer, eager Celery) for a first look on one
process. Tests and production set both and run on Postgres, channels-redis and a
Celery worker.
"""

import math
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.dbpool import check_when_idle

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    # A fixed development key is only acceptable for the local embedded default; a
    # real deployment sets SECRET_KEY (docs/operations.md).
    # The "django-insecure-" prefix makes `manage.py check --deploy` flag it.
    SECRET_KEY = "django-insecure-natter-development-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

# --- HTTPS and security headers (docs/operations.md, "Production settings") ------
# DJANGO_HTTPS=1 when clients reach the server over TLS (which a deployment must):
# secure cookies, a redirect from http, and HSTS. Off by default, so that `make run`
# works on plain http://127.0.0.1. `manage.py check --deploy` is clean with it on,
# DJANGO_DEBUG off and a real SECRET_KEY.
HTTPS = env_bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", HTTPS)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", HTTPS)
# Only behind a proxy that ends TLS and always sets this header (overwriting what a
# client sent), e.g. DJANGO_SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto: then a
# request the proxy marks `https` counts as secure. Never set it otherwise: a
# client could claim https itself.
if os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER"):
    _proxy_header = os.environ["DJANGO_SECURE_PROXY_SSL_HEADER"].strip().upper().replace("-", "_")
    SECURE_PROXY_SSL_HEADER = (f"HTTP_{_proxy_header}", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
EMBEDDED = not DATABASE_URL and not REDIS_URL

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "apps.common",
    "apps.accounts",
    "apps.messaging",
    "apps.groups",
    "apps.media",
    "apps.presence",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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

# --- Database -------------------------------------------------------------------
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Every database_sync_to_async in a daphne process shares one thread and
        # closes its connection after each call: a pool makes that close cheap and
        # bounds the connections one process holds (STACK-NOTES trap 3 and 4).
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("DB_POOL_MAX", 20),
            # How long a request waits for a connection before it is answered 503
            # `unavailable`. Short: while Postgres is down no connection is coming, and
            # a client told "retry" at once beats one left hanging through the outage.
            "timeout": env_int("DB_POOL_TIMEOUT", 3),
            # Django's health check (CONN_HEALTH_CHECKS) would cost a round trip on
            # every database call; this one checks only connections left idle.
            "check": check_when_idle,
        }
        # Parameters bound by the server, not quoted into the SQL text, and a
        # statement run five times on a connection prepared there: Postgres then
        # stops parsing and planning the hot path's queries on every call (planning
        # took five times as long as running them). Django leaves preparing off
        # for the sake of transaction-mode poolers (PgBouncer before 1.21), which
        # is what DB_PREPARED_STATEMENTS=0 is for.
        DATABASES["default"]["OPTIONS"]["server_side_binding"] = env_bool(
            "DB_SERVER_SIDE_BINDING", True
        )
        if env_bool("DB_PREPARED_STATEMENTS", True):
            DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 5

else:
    VAR_DIR.mkdir(exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH") or VAR_DIR / "db.sqlite3",
            # WAL plus IMMEDIATE transactions and a busy timeout: concurrent
            # writers queue instead of failing with "database is locked".
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"
                ),
            },
        }
    }

# --- Redis: channel layer, cache (rate limits), Celery broker -------------------
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # Several Redis servers shard the layer: channels-redis spreads
                # channels and groups over them by a hash of their names.
                # driver_info None: no CLIENT SETINFO on connect. redis-py otherwise
                # reads its own package metadata from disk for every connection
                # (about a millisecond), and async_to_sync (a Celery fan-out's
                # doorbells) opens new connections on every call.
                "hosts": [
                    {"address": url.strip(), "driver_info": None}
                    for url in (os.environ.get("CHANNEL_LAYER_URLS") or REDIS_URL).split(",")
                    if url.strip()
                ],
                "capacity": 1000,
                # One Redis list carries the messages of all of a process's sockets
                # (thousands): at 1000 it filled under load and dropped everyone's.
                "channel_capacity": {"specific.*": 50_000},
                # Longer than a socket can live between heartbeats: consumers also
                # re-join their groups on every heartbeat.
                "group_expiry": 86400 * 2,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "apps.common.rediscache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "natter",
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://localhost/"
    CELERY_TASK_ALWAYS_EAGER = True

CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "inbox-expire": {
        "task": "apps.messaging.tasks.inbox_expire_task",
        "schedule": timedelta(minutes=env_int("INBOX_EXPIRE_EVERY_MINUTES", 60)),
    },
    "fanout-sweep": {
        "task": "apps.groups.tasks.fanout_sweep_task",
        "schedule": timedelta(seconds=env_int("FANOUT_SWEEP_EVERY_S", 5)),
    },
    "media-expire": {
        "task": "apps.media.tasks.media_expire_task",
        "schedule": timedelta(minutes=env_int("MEDIA_EXPIRE_EVERY_MINUTES", 60)),
    },
    "sessions-clear": {
        "task": "apps.accounts.tasks.sessions_clear_task",
        "schedule": timedelta(hours=24),
    },
}

# --- Auth, sessions --------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if env_bool("NATTER_FAST_PASSWORD_HASHER", False):
    # Tests only: create hundreds of users without paying for PBKDF2 each time.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Scrapers present `Authorization: Bearer <METRICS_TOKEN>` at /metrics; staff may look too.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# --- Media (PROTOCOL §7; apps/media) -------------------------------------------
# Encrypted attachments. Local files under MEDIA_ROOT by default; any S3-compatible
# store with MEDIA_STORAGE=s3 and the MEDIA_S3_* variables (docs/operations.md).
# Blobs are only ever served through GET /api/v1/media/{id}, never by MEDIA_URL.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or VAR_DIR / "media")
MEDIA_STORAGE = os.environ.get("MEDIA_STORAGE", "local")
if MEDIA_STORAGE == "s3":
    _media_backend = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["MEDIA_S3_BUCKET"],
            "endpoint_url": os.environ.get("MEDIA_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("MEDIA_S3_REGION") or None,
            "access_key": os.environ.get("MEDIA_S3_ACCESS_KEY_ID") or None,
            "secret_key": os.environ.get("MEDIA_S3_SECRET_ACCESS_KEY") or None,
            "location": os.environ.get("MEDIA_S3_PREFIX", "natter"),
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
elif MEDIA_STORAGE == "local":
    _media_backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "base_url": None},
    }
else:
    raise ImproperlyConfigured(f"MEDIA_STORAGE must be 'local' or 's3', not {MEDIA_STORAGE!r}")
STORAGES = {
    "default": _media_backend,
    "media": _media_backend,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads are streamed through a temporary file here, never held in memory.
FILE_UPLOAD_TEMP_DIR = os.environ.get("FILE_UPLOAD_TEMP_DIR") or None

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # libsodium.js for the browser's end-to-end crypto, from npm (package-lock.json):
    # the page's import map points the bare names at these ES modules.
    ("vendor/libsodium-wrappers", BASE_DIR / "node_modules/libsodium-wrappers/dist/modules-esm"),
    ("vendor/libsodium", BASE_DIR / "node_modules/libsodium/dist/modules-esm"),
]

# --- REST API ----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.BearerTokenAuthentication",
        "apps.accounts.authentication.DeviceSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.common.api.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.common.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Natter API",
    "DESCRIPTION": "REST API of Natter, a WhatsApp-style messenger. See docs/protocol.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Two choice sets share the field name `kind`: give each enum its own name.
    "ENUM_NAME_OVERRIDES": {
        "MessageKindEnum": "apps.messaging.models.Message.Kind",
        "ConversationKindEnum": ["direct", "group"],
    },
}

# --- Messaging limits (PROTOCOL §4, §5) ---------------------------------------
NATTER = {
    "HEARTBEAT_S": env_int("HEARTBEAT_S", 30),
    "WINDOW": env_int("INBOX_WINDOW", 200),
    "LONGPOLL_MAX_TIMEOUT_S": 30,
    "LONGPOLL_DEFAULT_LIMIT": 200,
    "LONGPOLL_MAX_LIMIT": 500,
    "CIPHERTEXT_MAX_BYTES": env_int("CIPHERTEXT_MAX_BYTES", 64 * 1024),
    "FRAME_MAX_BYTES": env_int("FRAME_MAX_BYTES", 256 * 1024),
    "MAX_CIPHERTEXTS": env_int("MAX_CIPHERTEXTS", 600),
    "RETENTION_DAYS": env_int("RETENTION_DAYS", 30),
    "GROUP_MAX_MEMBERS": env_int("GROUP_MAX_MEMBERS", 256),
    # A socket's ack waits this long for others of the same burst to commit with.
    "ACK_GATHER_MS": env_int("ACK_GATHER_MS", 50),
    # A group message whose fan-out has not finished after this long is queued again.
    "FANOUT_STALE_S": env_int("FANOUT_STALE_S", 5),
    # A socket that keeps sending bad frames is closed with 4429.
    "ABUSE_ERRORS": env_int("SOCKET_ABUSE_ERRORS", 30),
    "ABUSE_WINDOW_S": 10,
    # Presence and typing (PROTOCOL §6; docs/operations.md, "Presence").
    # A registry entry lives this long after its device's last heartbeat, so a
    # crashed process's devices turn offline by themselves.
    "PRESENCE_TTL_S": env_int("PRESENCE_TTL_S", 3 * env_int("HEARTBEAT_S", 30)),
    # Offline is announced this long after the last device went away, and not at
    # all if one comes back first: flapping networks do not flood watchers.
    "PRESENCE_GRACE_S": env_int("PRESENCE_GRACE_S", 5),
    # How often some server process looks for expired entries and due offlines.
    "PRESENCE_SWEEP_S": env_int("PRESENCE_SWEEP_S", 5),
    "PRESENCE_MAX_SUBSCRIPTIONS": 100,
    # The registry may live on a Redis of its own; REDIS_URL by default.
    "PRESENCE_REDIS_URL": os.environ.get("PRESENCE_REDIS_URL", "") or REDIS_URL,
    "TYPING_RATE": env_int("TYPING_RATE_PER_10S", 10),
    "TYPING_MAX_MEMBERS": 50,
    "TYPING_EXPIRES_S": 10,
    # The key directory (PROTOCOL §2; docs/crypto.md).
    "PREKEYS_PER_UPLOAD": 100,
    "PREKEYS_MAX_STOCK": env_int("PREKEYS_MAX_STOCK", 1000),
    "PREKEYS_LOW": 10,
    # Claims per claiming device per minute: enough to open sessions with every
    # member of a 256-member group at once, and per (claimer, user) so that one
    # device cannot drain somebody's one-time prekeys.
    "KEY_CLAIM_RATE": env_int("KEY_CLAIM_RATE_PER_MINUTE", 600),
    "KEY_CLAIM_RATE_PER_USER": env_int("KEY_CLAIM_RATE_PER_USER_PER_MINUTE", 30),
    # Media (apps/media).
    "MEDIA_MAX_BYTES": env_int("MEDIA_MAX_BYTES", 100 * 1024 * 1024),
    # daphne hands a request body to the application all at once, in memory: a
    # single-request upload is capped here, larger files go up in parts of at most
    # MEDIA_PART_MAX_BYTES through the resumable upload (docs/protocol.md §7c).
    "MEDIA_SINGLE_MAX_BYTES": env_int("MEDIA_SINGLE_MAX_BYTES", 8 * 1024 * 1024),
    "MEDIA_PART_MAX_BYTES": env_int("MEDIA_PART_MAX_BYTES", 4 * 1024 * 1024),
    "MEDIA_RETENTION_DAYS": env_int("MEDIA_RETENTION_DAYS", 30),
    "MEDIA_UNREFERENCED_HOURS": env_int("MEDIA_UNREFERENCED_HOURS", 24),
    "MEDIA_UPLOAD_RATE": env_int("MEDIA_UPLOAD_RATE_PER_MINUTE", 30),
    # --- Rate limits (apps/common/ratelimit.py; docs/protocol.md §10) ---------------
    # Token buckets, atomic in Redis: a bucket of BURST tokens refilled at RATE.
    # NATTER_RATE_LIMITS=off turns every limit off (benchmarks, load tests).
    "RATE_LIMITS": env_bool("NATTER_RATE_LIMITS", True),
    # Sends per device: far above what a busy bot or a benchmark client sends (100/s).
    # SEND_RATE_PER_MINUTE, the older setting, is still read when SEND_RATE_PER_S is not.
    "SEND_RATE": env_int("SEND_RATE_PER_S", math.ceil(env_int("SEND_RATE_PER_MINUTE", 12000) / 60)),
    "SEND_BURST": env_int("SEND_BURST", 1000),
    # Login attempts per username (so nobody can guess a password quickly).
    "LOGIN_RATE": env_int("LOGIN_RATE_PER_MINUTE", 20),
    # New WebSockets and long-polls per client address. Loopback is exempt: a proxy
    # on the same host without daphne's --proxy-headers would otherwise put every
    # client into one bucket (and local benchmarks and tests connect from there).
    "CONNECT_RATE": env_int("CONNECT_RATE_PER_S", 100),
    "CONNECT_BURST": env_int("CONNECT_BURST", 1000),
    "RATE_LIMIT_EXEMPT_IPS": os.environ.get("RATE_LIMIT_EXEMPT_IPS", "127.0.0.0/8,::1"),
    # The admin's stuck-queue view lists devices whose oldest undelivered event is older.
    "STUCK_INBOX_MINUTES": env_int("STUCK_INBOX_MINUTES", 10),
}

# A REST body is held to the WebSocket's frame limit; larger ones get 413 too_large.
DATA_UPLOAD_MAX_MEMORY_SIZE = NATTER["FRAME_MAX_BYTES"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
    "loggers": {
        "natter": {"level": os.environ.get("NATTER_LOG_LEVEL", "INFO"), "propagate": True},
    },
}
