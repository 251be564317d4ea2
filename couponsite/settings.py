"""Settings for the flash-sale coupon service.

Everything deployment-specific comes from the environment (see docs/operator-guide.md,
configuration table). The defaults run the service locally with zero setup on
a SQLite file; set DATABASE_URL to use PostgreSQL.
"""

import os
import re
import warnings
import zoneinfo
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from couponsite.logs import RENDERERS, configure_structlog, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}.")


def env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}.") from None


def env_list(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

# Without SECRET_KEY the service still starts (zero-setup local use) with a
# key that `manage.py check --deploy` flags as insecure; production sets one.
SECRET_KEY = os.environ.get("SECRET_KEY") or "django-insecure-local-development-key-set-SECRET_KEY-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    # Before coupons, whose admin unregisters the library's own key model.
    "rest_framework_api_key",
    "coupons",
    # After coupons: it adds its rules to coupons through coupons/extensions.py.
    "campaigns",
    # Fair admission (waiting room, draw): adds its rules to coupons through coupons/extensions.py.
    "admission",
]

MIDDLEWARE = [
    # First: request latency, status and view metrics for /metrics.
    "couponsite.request_metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Binds a request_id to every log line of the request; after whitenoise,
    # so that static files are not logged, and before the body limit, so
    # that 413s are.
    "couponsite.request_logs.RequestLogMiddleware",
    "couponsite.middleware.RequestBodyLimitMiddleware",
    "couponsite.middleware.NulRefusalMiddleware",
    # Sessions, authentication and messages: for the admin's pages only
    # (ADMIN_PATH); the API, /health and /metrics go without.
    "couponsite.middleware.AdminSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "couponsite.middleware.AdminAuthenticationMiddleware",
    "couponsite.middleware.AdminMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Where the admin is served (couponsite/urls.py): the only pages with sessions.
ADMIN_PATH = "/admin/"

ROOT_URLCONF = "couponsite.urls"
WSGI_APPLICATION = "couponsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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


# Database -------------------------------------------------------------------

DEFAULT_DATABASE_URL = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"


def database_settings(url):
    """DATABASES["default"] for a DATABASE_URL, tuned for concurrent claims."""
    # Before a persistent connection is reused in a request, check that a
    # database restart or failover has not broken it (PostgreSQL: without a
    # round trip, couponsite/postgresql); otherwise a broken one fails one
    # request (a 503) and is then replaced.
    config = dj_database_url.parse(url, conn_health_checks=env_bool("DATABASE_CONN_HEALTH_CHECKS", True))
    engine = config["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        # SQLite has no row locks (select_for_update is a no-op there): every
        # transaction starts with BEGIN IMMEDIATE and so takes the database's
        # single write lock up front, which serialises claims. The busy
        # timeout makes waiters queue for that lock instead of failing, and
        # WAL lets readers run while a claim writes.
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": env_int("SQLITE_BUSY_TIMEOUT", 20),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Django's default SQLite test database is a shared-cache in-memory
        # database, whose table locks ignore the busy timeout; the stress
        # tests need a real file that many connections can share.
        config["TEST"] = {"NAME": str(Path(config["NAME"]).with_name("test_" + Path(config["NAME"]).name))}
    elif engine == "django.db.backends.postgresql":
        config["ENGINE"] = "couponsite.postgresql"  # Django's, with the round-trip-free connection check
        # Bounds (seconds, 0: none) on one statement and on one wait for a
        # row lock: a stuck lock or a runaway query ends in an
        # OperationalError, answered with a 503, instead of holding a
        # server thread without end. Both are far above what a claim waits in
        # a flash-sale queue (see docs/architecture.md, Timeouts).
        statement_timeout_ms = env_int("DATABASE_STATEMENT_TIMEOUT", 15) * 1000
        lock_timeout_ms = env_int("DATABASE_LOCK_TIMEOUT", 10) * 1000
        # And on how long a transaction may sit waiting for its client. The
        # service never pauses inside one (a claim group's statements follow
        # each other within milliseconds), so a transaction idle that long
        # belongs to an app process that froze or lost its network while it
        # held a coupon's row lock: PostgreSQL ends it and frees the lock,
        # and the claims of every other host go on (docs/deployment.md).
        idle_timeout_ms = env_int("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", 2) * 1000
        config["OPTIONS"] = {
            "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT", 5),
            "options": f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms}"
            f" -c idle_in_transaction_session_timeout={idle_timeout_ms}",
            # Send parameters apart from the SQL (the extended protocol)
            # rather than interpolated on the client. Django leaves psycopg's
            # automatic prepared statements off (prepare_threshold None), so
            # statements are still parsed per execution: which is also what
            # lets PgBouncer 1.18 in transaction mode carry them (docs/deployment.md).
            "server_side_binding": env_bool("DATABASE_SERVER_SIDE_BINDING", True),
            # Set: psycopg prepares a statement on a connection after this many executions of it (PgBouncer
            # carries prepared statements in transaction mode only from 1.21, with max_prepared_statements).
            "prepare_threshold": env_int("DATABASE_PREPARE_THRESHOLD", None),
            # Parameters of the URL itself (?sslmode=require...) win.
            **config.get("OPTIONS", {}),
        }
        pool_max_size = env_int("DATABASE_POOL_MAX_SIZE", 0)
        if pool_max_size:
            # psycopg's pool replaces persistent connections (Django requires
            # CONN_MAX_AGE = 0 with it); useful with threaded workers.
            config["OPTIONS"]["pool"] = {
                "min_size": 1,
                "max_size": pool_max_size,
                "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
            }
            config["CONN_MAX_AGE"] = 0
        else:
            config["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60)
    return config


DATABASES = {"default": database_settings(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)}

# What each process knows of coupons, to refuse claims without a query
# (coupons/coupon_states.py). On PostgreSQL it is kept while a connection of
# the process's own LISTENs for changes: DATABASE_LISTEN_URL, by default the
# database's own settings. Behind PgBouncer in transaction mode (where LISTEN
# does not work) point it at PostgreSQL itself (or a session-mode pool).
# On SQLite a state is kept COUPON_STATE_TTL_SQLITE_MS. Off: every claim goes
# to the database (as before), for comparison.
COUPON_STATE_CACHE = env_bool("COUPON_STATE_CACHE", True)
DATABASE_LISTEN_URL = os.environ.get("DATABASE_LISTEN_URL", "")
COUPON_STATE_TTL_SQLITE = env_int("COUPON_STATE_TTL_SQLITE_MS", 100) / 1000
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# Internationalisation and static files ---------------------------------------

LANGUAGE_CODE = "en-us"
# The operators' time zone: the admin shows and reads times in it. Times
# are stored, and the API speaks, in UTC whatever it is.
TIME_ZONE = os.environ.get("ADMIN_TIME_ZONE") or "UTC"
if TIME_ZONE not in zoneinfo.available_timezones():
    raise ImproperlyConfigured(f"ADMIN_TIME_ZONE must be an IANA time zone such as Europe/Paris, got {TIME_ZONE!r}.")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed but not manifest-hashed: pages render even before
    # collectstatic has run (tests, a fresh checkout).
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Lets whitenoise serve the apps' static files without collectstatic (the
# Docker image runs it; a fresh checkout need not), so a missing STATIC_ROOT
# is expected rather than worth a warning.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)


# Request limits ---------------------------------------------------------------

# Coupon and claim bodies are tiny; anything larger is refused with a 413.
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 16 * 1024)
# POST /api/coupons/{name}/codes streams its body (1,000,000 codes are ~20 MB): its own limit.
MAX_CODE_IMPORT_BODY_BYTES = env_int("MAX_CODE_IMPORT_BODY_BYTES", 1024 * 1024 * 1024)
# Seconds an import may run its statements and wait for locks, and its client pause its upload
# (coupons/imported_codes.py).
CODE_IMPORT_TIMEOUT = env_int("CODE_IMPORT_TIMEOUT", 600)
CODE_IMPORT_IDLE_TIMEOUT = env_int("CODE_IMPORT_IDLE_TIMEOUT", 30)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
APPEND_SLASH = False


# Cache and rate limits ----------------------------------------------------------


def cache_settings(redis_url):
    """CACHES: Redis at `redis_url` (django-redis), else local memory."""
    if not redis_url:
        # Per process: with several server workers, each counts on its own.
        return {
            "default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "OPTIONS": {"MAX_ENTRIES": 100_000},
            }
        }
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": "couponsite",
            "OPTIONS": {
                # The cache only counts requests for the rate limit: should
                # Redis be away, claims go on unthrottled rather than fail
                # (and the error is logged).
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }


CACHES = cache_settings(os.environ.get("REDIS_URL", ""))
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True


def env_rate(name):
    """A rate such as "100/s" or "1000/m" (a fixed window per second, minute, hour or day); empty: no limit."""
    value = os.environ.get(name, "")
    if value and not re.fullmatch(r"[1-9][0-9]*/(s|sec|m|min|h|hour|d|day)", value):
        raise ImproperlyConfigured(f'{name} must look like "100/s" or "1000/m", got {value!r}.')
    return value


# Claims per client address, and per API key (when keys are required).
CLAIM_RATE_LIMIT = env_rate("CLAIM_RATE_LIMIT")
CLAIM_RATE_LIMIT_PER_KEY = env_rate("CLAIM_RATE_LIMIT_PER_KEY")


# API --------------------------------------------------------------------------

# Off: anyone may create coupons (the API contract). On: only authenticated
# staff users, by DRF token or admin session.
COUPON_CREATE_REQUIRES_STAFF = env_bool("COUPON_CREATE_REQUIRES_STAFF", False)

# Off: the API is open (the contract). On: every /api/ request needs
# `Authorization: Api-Key <key>` with the endpoint's scope (coupons/api/key_access.py).
API_KEYS_REQUIRED = env_bool("API_KEYS_REQUIRED", False)
# Seconds a worker trusts a key it has verified before reading it again: the
# most a revocation (or a change of scopes or expiry date) takes to bite.
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5)

# The hold expiry worker (python manage.py expire_holds) sleeps until the
# next deadline it knows of, and never longer than this between passes: the
# most a hold shorter than it, granted while the worker sleeps, expires late.
EXPIRE_HOLDS_MAX_SLEEP_MS = env_int("EXPIRE_HOLDS_MAX_SLEEP_MS", 1000)

# Idempotency-Key (coupons/idempotency.py): how long a key's answer is kept
# and replayed, and how long a request may hold its key before a retry can
# take it over (longer than a request lasts: its database waits are bounded,
# connection 5 s, lock 10 s, statement 15 s by default).
IDEMPOTENCY_TTL = env_int("IDEMPOTENCY_TTL", 24 * 3600)
IDEMPOTENCY_LEASE = env_int("IDEMPOTENCY_LEASE", 60)


# Fair admission (admission/) ---------------------------------------------------

# The Ed25519 keys that sign admission tokens: "kid:key,kid:key", each key 32
# bytes in base64url (`python manage.py admission_key` prints a new one). The
# first signs; every one listed verifies (rotation: add the new key second,
# then move it first, then drop the old one once its tokens have lapsed).
# Unset: one key derived from SECRET_KEY (HKDF), the same on every host that
# shares SECRET_KEY, and as secret as it is; `check --deploy` flags it, as it
# flags the default SECRET_KEY (admission/tokens.py).
ADMISSION_SIGNING_KEYS = os.environ.get("ADMISSION_SIGNING_KEYS", "")
ADMISSION_TOKEN_ISSUER = os.environ.get("ADMISSION_TOKEN_ISSUER") or "couponsite"
# Milliseconds a process serves queue positions from its cache before reading the
# coupon's admission state again (admission/standings.py): the most a poll's answer lags.
ADMISSION_POLL_REFRESH_MS = env_int("ADMISSION_POLL_REFRESH_MS", 1000)
# The admission worker's pass interval (python manage.py run_admission).
ADMISSION_PASS_MS = env_int("ADMISSION_PASS_MS", 250)
# On: an entry needs a solved ALTCHA proof of work (`altcha`, from GET
# /api/admission/challenge; admission/proof_of_work.py). Each attempt costs
# ADMISSION_PROOF_OF_WORK_COST PBKDF2/SHA-256 iterations and the answer is drawn
# up to ADMISSION_PROOF_OF_WORK_MAX_NUMBER: a client tries half of them on average
# (0.5 s of one core by default), while the server derives one key per challenge
# (0.16 ms): a few iterations per attempt and many attempts keep a challenge cheap
# to hand out (docs/fair-admission.md measures both).
ADMISSION_PROOF_OF_WORK = env_bool("ADMISSION_PROOF_OF_WORK", False)
ADMISSION_PROOF_OF_WORK_COST = env_int("ADMISSION_PROOF_OF_WORK_COST", 500)
ADMISSION_PROOF_OF_WORK_MAX_NUMBER = env_int("ADMISSION_PROOF_OF_WORK_MAX_NUMBER", 10_000)
ADMISSION_PROOF_OF_WORK_SECONDS = env_int("ADMISSION_PROOF_OF_WORK_SECONDS", 300)


# Webhooks (coupons/webhooks.py) -----------------------------------------------

# Off: subscription URLs that are or resolve to loopback, private, link-local
# or otherwise non-public addresses are refused, at subscription and at every
# delivery (server-side request forgery). On: for receivers on a private network.
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
# Seconds one delivery may take, connecting and answering included.
WEBHOOK_TIMEOUT = env_int("WEBHOOK_TIMEOUT", 10)
# Failed deliveries are retried with exponential backoff (from 1 s, doubling,
# at most WEBHOOK_BACKOFF_MAX seconds apart, with jitter) for WEBHOOK_RETRY_FOR
# seconds; then the subscription is disabled.
WEBHOOK_RETRY_FOR = env_int("WEBHOOK_RETRY_FOR", 24 * 3600)
WEBHOOK_BACKOFF_MAX = env_int("WEBHOOK_BACKOFF_MAX", 3600)
# How often an idle delivery worker looks for new events, in milliseconds.
WEBHOOK_POLL_MS = env_int("WEBHOOK_POLL_MS", 200)
# The delivery worker's Prometheus metrics on this port of WEBHOOK_METRICS_HOST (0: not served).
WEBHOOK_METRICS_PORT = env_int("WEBHOOK_METRICS_PORT", 0)
WEBHOOK_METRICS_HOST = os.environ.get("WEBHOOK_METRICS_HOST") or "127.0.0.1"
# Days events are kept in the outbox (GET /api/events, webhooks not yet delivered).
EVENT_RETENTION_DAYS = env_int("EVENT_RETENTION_DAYS", 7)
# Set (e.g. nats://127.0.0.1:4222): deliver_events also publishes every event to this NATS server's
# JetStream, in the stream EVENTS_NATS_STREAM, on the subject "<EVENTS_NATS_SUBJECT>.<event type>".
EVENTS_NATS_URL = os.environ.get("EVENTS_NATS_URL", "")
EVENTS_NATS_STREAM = os.environ.get("EVENTS_NATS_STREAM") or "COUPON_EVENTS"
EVENTS_NATS_SUBJECT = os.environ.get("EVENTS_NATS_SUBJECT") or "coupons.events"

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["coupons.api.errors.StrictJSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
    # Proxies in front of the service whose X-Forwarded-For is trusted to
    # name the client for the rate limit; 0: the socket's address, so that a
    # client cannot dodge the limit with a forged header.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "coupons.api.errors.LenientContentNegotiation",
    "EXCEPTION_HANDLER": "coupons.api.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Flash-sale coupon service",
    "DESCRIPTION": "Create coupons and claim them under heavy concurrency: never oversold, one claim per user.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Operations are tagged by the path's first segment after /api/ (coupons, users, redemptions...): the
    # generated clients' modules. Without it, /.well-known/jwks.json made the common prefix "/" and every
    # operation's tag "api".
    "SCHEMA_PATH_PREFIX": r"/api/",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "coupons.api.key_access.document_key_errors",
        "coupons.api.idempotency.document_idempotency_errors",
        "coupons.api.code_import_views.document_import_body_required",
    ],
    # The error codes' enum under a name that says what it is (not "CodeEnum").
    "ENUM_NAME_OVERRIDES": {
        "ErrorCode": "coupons.api.error_codes.ErrorCode",
        "ClaimStatus": "coupons.models.ClaimStatus",
        "EventType": "coupons.outbox.EVENT_TYPES",
        "EntryStatus": "admission.models.EntryStatus",
        "AdmissionMode": "admission.models.Mode",
    },
}


# Security: hardened whenever DEBUG is off ------------------------------------

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SESSION_COOKIE_HTTPONLY = True
    SECURE_REFERRER_POLICY = "same-origin"
    # TLS is usually terminated by a proxy in front of the server: these are
    # opt-in so that plain-HTTP local use keeps working.
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


# Metrics ----------------------------------------------------------------------

# Request latency histograms (django-prometheus): a claim takes milliseconds,
# so the buckets start at 1 ms for a meaningful p99.
PROMETHEUS_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
# Under the server, PROMETHEUS_MULTIPROC_DIR (set by couponsite/serve.py) makes
# every worker write its metrics to files there, and /metrics adds them up.


# Logging ----------------------------------------------------------------------

# JSON lines for log collectors; aligned human-readable lines with DEBUG on.
LOG_FORMAT = os.environ.get("LOG_FORMAT") or ("console" if DEBUG else "json")
if LOG_FORMAT not in RENDERERS:
    raise ImproperlyConfigured(f"LOG_FORMAT must be one of {', '.join(RENDERERS)}, got {LOG_FORMAT!r}.")
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
configure_structlog(renderer=LOG_FORMAT, level=LOG_LEVEL)
LOGGING = logging_config(renderer=LOG_FORMAT, level=LOG_LEVEL)
