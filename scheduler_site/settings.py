"""Django settings, read from the environment only (12-factor).

Every value a deployment changes comes from an environment variable parsed by a
small strict helper below: a malformed value stops start-up with a message that
names the variable, instead of silently falling back to a default.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of {sorted(_TRUE | _FALSE)}, got {raw!r}")


def env_number(name: str, default: float, *, minimum: float = 0) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def env_header(name: str) -> tuple[str, str] | None:
    """ "X-Forwarded-Proto=https" -> ("HTTP_X_FORWARDED_PROTO", "https"), as Django wants it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    header, sep, value = raw.partition("=")
    if not sep or not header.strip() or not value.strip():
        raise ImproperlyConfigured(f"{name} must look like X-Forwarded-Proto=https, got {raw!r}")
    return "HTTP_" + header.strip().upper().replace("-", "_"), value.strip()


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEFAULT_SECRET_KEY = "insecure-development-key-do-not-use-in-production"

# "production" turns the safety checks at the bottom of this file on.
ENVIRONMENT = env_str("SCHEDULER_ENV", "development")
if ENVIRONMENT not in {"development", "production"}:
    raise ImproperlyConfigured(f"SCHEDULER_ENV must be development or production, got {ENVIRONMENT!r}")

SECRET_KEY = env_str("SECRET_KEY", DEFAULT_SECRET_KEY)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS",
    [] if ENVIRONMENT == "production" else ["localhost", "127.0.0.1", "[::1]", "testserver"],
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "tasks_app",
    # A deployment's own apps (with their `handlers` modules), e.g. "reports,billing".
    *env_list("EXTRA_INSTALLED_APPS", []),
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: locks the admin's login after repeated failures.
    "axes.middleware.AxesMiddleware",
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# A user name tried from one address is locked out after AXES_FAILURE_LIMIT failed logins,
# for AXES_COOLOFF_MINUTES; by name and address together, so nobody can lock an admin out
# from elsewhere. API tokens are not logins and are not counted.
AXES_FAILURE_LIMIT = int(env_number("AXES_FAILURE_LIMIT", 5, minimum=1))
AXES_COOLOFF_TIME = timedelta(minutes=env_number("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # no row for every successful login: a table that grows forever

# --- HTTPS (on by default in production, each overridable) ----------------------------
PRODUCTION = ENVIRONMENT == "production"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
# Probes and scrapes come from inside, often over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = int(env_number("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if PRODUCTION else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
# Behind a proxy that ends TLS: the header it sets, e.g. X-Forwarded-Proto=https.
SECURE_PROXY_SSL_HEADER = env_header("SECURE_PROXY_SSL_HEADER")

ROOT_URLCONF = "scheduler_site.urls"
WSGI_APPLICATION = "scheduler_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Searched before the apps: tasks_app's admin/base_site.html then wraps the admin's own
        # (the admin is installed first, and its app directory would win).
        "DIRS": [BASE_DIR / "tasks_app" / "templates"],
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

# --- Database -----------------------------------------------------------------------
# SQLite under var/ is the embedded default for the README's run command only; tests,
# benchmarks and deployments use MariaDB/MySQL through DATABASE_URL.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
_db = dj_database_url.parse(
    DATABASE_URL,
    conn_max_age=int(env_number("DB_CONN_MAX_AGE", 300)),
    conn_health_checks=True,
)
if _db["ENGINE"] == "django.db.backends.mysql":
    _db["OPTIONS"] = {
        "charset": "utf8mb4",
        # Conditional UPDATEs and skip-locked claims rely on seeing committed rows,
        # without REPEATABLE READ's gap locks.
        "isolation_level": "read committed",
        "connect_timeout": 5,
    }
    _db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    _db["OPTIONS"] = {
        # Web, worker and beat share the file: wait for the writer instead of failing,
        # and take the write lock at BEGIN so two writers never deadlock on upgrade.
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
# The admin shows every instant to the second (scheduler_site/formats/: Django's English
# formats stop at the minute, and a scheduler fires by the second).
FORMAT_MODULE_PATH = ["scheduler_site.formats"]

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise serves from it once collected
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files straight from the installed apps too, so the admin and the
# Swagger UI work before (or without) collectstatic.
WHITENOISE_USE_FINDERS = True

DATA_UPLOAD_MAX_MEMORY_SIZE = int(env_number("DATA_UPLOAD_MAX_MEMORY_SIZE", 2 * 1024 * 1024))

# --- REST API -----------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: an anonymous request is then answered 401 with WWW-Authenticate.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tasks_app.api.permissions.ModelPermissions"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "tasks_app.api.pagination.NewestFirstCursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tasks_app.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["tasks_app.api.parsers.BoundedJSONParser"],
}
# Submissions per user (DRF rate: N/s, N/min, N/hour); counted in the shared cache.
SUBMIT_THROTTLE_RATE = env_str("SUBMIT_THROTTLE_RATE", "6000/min")
# The broker, the cache and the concurrency locks may share one Redis database: each keeps
# its keys under a prefix of its own, so no name a user picks (a queue) can land on a key
# of another kind. Within the broker's, tasks_app.models.tasks refuses the names kombu,
# Celery and RabbitMQ keep for themselves.
BROKER_KEY_PREFIX = "broker:"
LOCK_KEY_PREFIX = "lock:"
ALERT_KEY_PREFIX = "alerts:"  # the alert rules' version (tasks_app.alerts)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env_str("CACHE_URL", env_str("REDIS_URL", "redis://127.0.0.1:6379/0")),
        "KEY_PREFIX": "cache",  # keys are "cache:<version>:<key>"
    }
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Scheduler platform API",
    "DESCRIPTION": "Tasks, runs, schedules and workflows on Celery.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from drf-spectacular-sidecar's static files: no CDN, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunStateEnum": "tasks_app.choices.RunState",
        "WorkflowStateEnum": "tasks_app.choices.WorkflowState",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasks_app.api.schema.document_errors",  # the 4xx and 503 answers of every operation
    ],
    # The schema and its UI are for users who may read something of the API (session or token).
    "SERVE_PERMISSIONS": ["tasks_app.api.permissions.CanReadSomething"],
}

# --- Celery -------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# The longest any run may take; the broker's visibility timeout must exceed it, or a
# message still being worked on would be delivered a second time.
RUN_MAX_DURATION = env_number("RUN_MAX_DURATION", 3600, minimum=1)

# The broker: Redis (REDIS_URL, the default) or RabbitMQ (amqp://...). Redis keeps the locks,
# the cache and the metrics whichever carries the messages.
BROKER_URL = env_str("BROKER_URL", REDIS_URL)
BROKER_SCHEME = BROKER_URL.partition("://")[0].lower()
if BROKER_SCHEME not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
    raise ImproperlyConfigured(
        f"BROKER_URL must name Redis (redis://) or RabbitMQ (amqp://), got {BROKER_SCHEME + '://'!r}"
    )
BROKER_IS_REDIS = BROKER_SCHEME in ("redis", "rediss")

CELERY_BROKER_URL = BROKER_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Bound how long a publish waits for an unreachable broker (kombu's default retries
    # forever): the run is already committed as pending and is sent again later.
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
if BROKER_IS_REDIS:
    CELERY_BROKER_TRANSPORT_OPTIONS |= {
        "global_keyprefix": BROKER_KEY_PREFIX,
        "visibility_timeout": int(RUN_MAX_DURATION * 2),
        # Ten priority levels (kombu's Redis transport: 0 is served first).
        "priority_steps": list(range(10)),
        "queue_order_strategy": "priority",
    }
else:
    # Every queue is declared with ten priority levels (x-max-priority; RabbitMQ serves 9
    # first). Celery's queues are durable and its messages persistent by default.
    CELERY_TASK_QUEUE_MAX_PRIORITY = 9
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # results live on the Run row
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_PUBLISH_RETRY = True
# Task events (what Flower and `celery events` read) are off, as in Celery: three broker
# publishes per run, in the worker's main process, which also feeds its pool. With them on, a
# worker finished no-op runs about a sixth slower (docs/configuration.md); `-E` turns them on too.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("WORKER_TASK_EVENTS", False)
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "tasks_app.scheduling:PlatformScheduler"
CELERY_BEAT_SCHEDULE = {
    # Built in: old runs, events and logs are pruned (tasks_app.retention), daily at 03:17.
    "prune old runs": {"task": "tasks_app.prune", "schedule": crontab(minute="17", hour="3")},
}
# Celery's Django fixup closes the database connection around every task; keep it
# open instead (execution.py closes it when it is unusable or older than CONN_MAX_AGE).
CELERY_DB_REUSE_MAX = 1_000_000

# --- Platform -----------------------------------------------------------------------
# How often beat looks for runs that became due (a run_at reached, a retry backoff over).
RUN_DISPATCH_INTERVAL = env_number("RUN_DISPATCH_INTERVAL", 0.5, minimum=0.01)
# Largest JSON result a handler may return, in bytes.
RUN_RESULT_MAX_BYTES = int(env_number("RUN_RESULT_MAX_BYTES", 1024 * 1024, minimum=1))
# A schedule's instant later than this (s) when fired counts as missed (misfire policy).
SCHEDULE_MISFIRE_GRACE = env_number("SCHEDULE_MISFIRE_GRACE", 60, minimum=0)
# The most missed instants a catch_up schedule fires at once.
SCHEDULE_CATCH_UP_MAX = int(env_number("SCHEDULE_CATCH_UP_MAX", 100, minimum=1))
# Expiry of a task's concurrency lock (s); beat extends the locks of active runs.
CONCURRENCY_LOCK_TTL = env_number("CONCURRENCY_LOCK_TTL", 60, minimum=3)
# Workers heartbeat every WORKER_HEARTBEAT_INTERVAL seconds and are offline after
# WORKER_MISSED_HEARTBEATS missed beats; their running runs then move on.
WORKER_HEARTBEAT_INTERVAL = env_number("WORKER_HEARTBEAT_INTERVAL", 5, minimum=0.1)
WORKER_MISSED_HEARTBEATS = int(env_number("WORKER_MISSED_HEARTBEATS", 3, minimum=1))
# How long (s) a worker keeps trying to reach an unreachable database to claim a run or
# record an attempt's outcome, holding the message meanwhile, before it gives up.
WORKER_DATABASE_PATIENCE = env_number("WORKER_DATABASE_PATIENCE", 600, minimum=0)
# A run whose worker died under it this many times, or whose message this many workers
# refused for want of its handler, is failed, not sent again.
RUN_MAX_DELIVERIES = int(env_number("RUN_MAX_DELIVERIES", 5, minimum=1))
# A pending run this long (s) with an empty queue and its message held by no worker lost
# that message: it is sent again; so is one a worker refused, after as long.
PENDING_RESEND_AFTER = env_number("PENDING_RESEND_AFTER", 30, minimum=1)
# Finished runs, their events and logs are pruned this many days after they finished.
RUN_RETENTION_DAYS = env_number("RUN_RETENTION_DAYS", 30, minimum=1)
# Hosts builtin.http may reach; empty means none.
BUILTIN_HTTP_ALLOWED_HOSTS = env_list("BUILTIN_HTTP_ALLOWED_HOSTS", [])

# --- Alerts (tasks_app.alerts evaluates, tasks_app.notifications delivers) ------------
# The platform's address as its users reach it: alerts link to their admin page under it.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# How often beat looks for late schedules, overrunning runs, offline workers and reminders (s).
ALERT_SWEEP_INTERVAL = env_number("ALERT_SWEEP_INTERVAL", 5, minimum=0.1)
# How often beat's sender looks for notifications to deliver (s).
ALERT_DELIVERY_INTERVAL = env_number("ALERT_DELIVERY_INTERVAL", 1, minimum=0.05)
# A webhook or Slack request, and an SMTP conversation, give up after this long (s).
ALERT_DELIVERY_TIMEOUT = env_number("ALERT_DELIVERY_TIMEOUT", 10, minimum=0.1)
# A sender's claim on a notification: another sender tries it after this long (s), so one that
# died mid-send is covered. Longer than a delivery may take, or two would send at once.
ALERT_DELIVERY_LEASE = env_number("ALERT_DELIVERY_LEASE", 60, minimum=1)
if ALERT_DELIVERY_LEASE <= ALERT_DELIVERY_TIMEOUT:
    raise ImproperlyConfigured("ALERT_DELIVERY_LEASE must be longer than ALERT_DELIVERY_TIMEOUT")
# A transient failure (429, 5xx, a timeout, a refused connection) is retried after
# ALERT_RETRY_BACKOFF seconds, doubling up to ALERT_RETRY_BACKOFF_MAX; a notification still
# undelivered ALERT_GIVE_UP_AFTER seconds after its event is failed, not sent stale.
ALERT_RETRY_BACKOFF = env_number("ALERT_RETRY_BACKOFF", 5, minimum=0.1)
ALERT_RETRY_BACKOFF_MAX = env_number("ALERT_RETRY_BACKOFF_MAX", 60, minimum=0.1)
ALERT_GIVE_UP_AFTER = env_number("ALERT_GIVE_UP_AFTER", 24 * 3600, minimum=1)
# E-mail channels go through Django's e-mail settings.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = int(env_number("EMAIL_PORT", 25, minimum=1))
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on")
EMAIL_TIMEOUT = ALERT_DELIVERY_TIMEOUT
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "scheduler@localhost")

# --- The console (tasks_app.rollups, the admin's dashboard) and /metrics ---------------
# How often beat brings the dashboard's rollup of finished runs up to date (s).
ROLLUP_INTERVAL = env_number("ROLLUP_INTERVAL", 15, minimum=0.1)
# The scrape key of /metrics, sent as "Authorization: Bearer KEY"; empty: only an API token
# (or a signed-in session) with view_run reads it.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_KEY_PREFIX = "metrics:"  # the counters and histograms in Redis (tasks_app.metrics)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # django-axes says at INFO that it starts, in every process; failed logins and lockouts are warnings.
    "loggers": {"axes": {"level": "WARNING"}},
}

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off in production (SCHEDULER_ENV=production)")
    # What Django's check --deploy calls a weak key (security.W009).
    if (
        SECRET_KEY == DEFAULT_SECRET_KEY
        or len(SECRET_KEY) < 50
        or len(set(SECRET_KEY)) < 5
        or SECRET_KEY.startswith("django-insecure-")
    ):
        raise ImproperlyConfigured(
            "SECRET_KEY must be a random secret of 50 characters or more, with 5 or more different ones, "
            "in production (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set in production")
    if "*" in ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must name the hosts in production, not *")
