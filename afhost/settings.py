"""afhost settings: everything comes from environment variables (see .env.example)."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from afhost.env import env_bool, env_float, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

# Without DEBUG there is no default: an unset key stays empty, which Django refuses to use, the
# server refuses to start with (afhost.checks.require_runtime_settings), and `manage.py check
# --deploy` reports (afhost.E002). Commands that need no secret (makemigrations) still work.
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY and DEBUG:
    # The web process and the worker must share the key (django-q2 signs tasks with it), so the
    # development key is kept in a local file, made on first use.
    _dev_key_file = BASE_DIR / ".dev-secret-key"
    if not _dev_key_file.exists():
        with tempfile.NamedTemporaryFile("w", dir=BASE_DIR, delete=False) as _new_key:
            _new_key.write(secrets.token_urlsafe(50))
        try:  # link, not rename: exactly one process creates the file, whole
            os.link(_new_key.name, _dev_key_file)
        except FileExistsError:
            pass
        finally:
            os.unlink(_new_key.name)
    SECRET_KEY = _dev_key_file.read_text().strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "social_django",
    "django_q",
    "afhost",
    "linking",
    "delivery",
    "channels_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's) with DEBUG off, from STATIC_ROOT; see afhost.static.
    "afhost.static.StaticFilesMiddleware",
    # PostgreSQL stores no NUL: a query parameter holding one gets a 400, not a 500 from a lookup.
    "afhost.middleware.refuse_nul_characters",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # social-auth's failures in the link ceremony end on its failure page, DEBUG or not.
    "linking.middleware.LinkFailureMiddleware",
]

ROOT_URLCONF = "afhost.urls"
ASGI_APPLICATION = "afhost.asgi.application"
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

# Database: a SQLite file by default; DATABASE_URL (postgres://user:pass@host:5432/name) otherwise.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
# django-q2's cluster forks its workers; pooled connections must never cross a fork, so the
# cluster uses plain connections, kept open (see below).
_IS_CLUSTER = sys.argv[1:2] in (["worker"], ["qcluster"])
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and not _IS_CLUSTER:
    # Async views hop into a worker thread per request; a pool keeps connections warm there.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 1,
            "max_size": env_int("DATABASE_POOL_SIZE", 10, minimum=1),
            # A request that gets no connection within this many seconds is answered 503.
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10, minimum=0.1),
        }
    }
    # The pool checks a connection before handing it out (Django passes psycopg_pool's
    # check=ConnectionPool.check_connection when this is on; a "check" in the pool options would
    # clash with it), so one the server dropped (after a PostgreSQL restart) is replaced instead
    # of failing a request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker share the file: WAL plus IMMEDIATE avoids "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Opening a SQLite connection (with those pragmas) costs more than most queries: threads keep
    # theirs (django-q2's broker would otherwise reopen one for every task it queues).
    DATABASES["default"]["CONN_MAX_AGE"] = None
if _IS_CLUSTER:
    # django-q2's broker closes stale connections before every queue operation: with connections
    # closed after each use, that is a new connection per dequeue and per acknowledgement (some 30
    # tasks/s on PostgreSQL). A worker's processes are long-lived: persistent connections,
    # checked before reuse; a forked process drops those it inherited (afhost.db).
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The operator REST API (delivery/api.py): staff only, by token (made in the admin's "Tokens"
# page) or by the admin session.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` copies the static files here, with gzip-compressed twins, and
# WhiteNoise serves them (afhost.static). With DEBUG on, the development server serves them
# from the apps instead.
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Not the manifest (hashed names) storage: that one fails every page with a static file on
    # it until collectstatic has run; files are cached for WhiteNoise's 60 s instead.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- HTTPS (see "Production" in the README) ----------------------------------------------------
# A reverse proxy in front of us terminates TLS: trust its X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("AFHOST_BEHIND_PROXY") else None
)
# The site is served over HTTPS only: plain HTTP is redirected, cookies are sent over HTTPS
# only, and browsers are told (HSTS) to use nothing else for SECURE_HSTS_SECONDS.
AFHOST_HTTPS = env_bool("AFHOST_HTTPS", False)
SECURE_SSL_REDIRECT = AFHOST_HTTPS
# Probes reach the server directly, over plain HTTP (/healthz is answered before Django).
SECURE_REDIRECT_EXEMPT = [r"^readyz$", r"^readiness$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = AFHOST_HTTPS
SECURE_HSTS_SECONDS = env_int(
    "SECURE_HSTS_SECONDS", 365 * 24 * 3600 if AFHOST_HTTPS else 0, minimum=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", AFHOST_HTTPS)
# Consent to browsers' HSTS preload lists (the host is listed only once someone submits it).
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# Request bodies (images and files travel inline as data URLs) are capped here. An API request
# over it is refused from its Content-Length, or as soon as it grows past it.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("AFHOST_MAX_REQUEST_BYTES", 10 * 1024 * 1024, minimum=1024)
# Seconds a client may take to send a request body to the API or the Telegram webhook (408).
AFHOST_BODY_TIMEOUT = env_float("AFHOST_BODY_TIMEOUT", 30, minimum=0.1)

# Every handler redacts the configured secrets (the bot token is in every Bot API URL); Django's
# loggers reach it through the root instead of Django's unfiltered default handlers.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact_secrets": {"()": "afhost.logs.RedactSecrets"},
        "queue_task_chatter": {"()": "afhost.logs.QueueTaskChatter"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"handlers": [], "level": "INFO"},  # drops Django's own handlers
        # A 4xx is in the server's access line already; 5xx (with their tracebacks) stay.
        "django.request": {"level": "ERROR"},
        # Daphne's start-up notes (no HTTP/2, the endpoint) repeat what runserver says.
        "daphne.server": {"level": "WARNING"},
        # One INFO line per HTTP request (each Bot API call) is noise.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # The openai SDK's HTTP client (a model target's every call).
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        # Three lines a task (queued, processing, processed) are noise; the cluster's own stay.
        "django-q": {"filters": ["queue_task_chatter"]},
    },
}

# --- afhost ------------------------------------------------------------------------------------

# The hosted agent: "package.module:attribute" naming an agent_framework Agent or an async callable,
# or a built-in model target: openai, azure-openai or openai-compatible (see "A hosted model").
AFHOST_TARGET = env_str("AFHOST_TARGET", "afhost.demo:agent")
# A background run that takes longer than this is stopped and marked failed.
AFHOST_RUN_TIMEOUT = env_int("AFHOST_RUN_TIMEOUT", 600, minimum=5)
# Seconds a process trusts an API key it has looked up (so revoking takes up to this long).
AFHOST_API_KEY_CACHE_SECONDS = env_float("AFHOST_API_KEY_CACHE_SECONDS", 5)
# How often a background run checks whether it was cancelled, and a stream tail polls for events.
AFHOST_POLL_INTERVAL = env_float("AFHOST_POLL_INTERVAL", 0.1)
# An event stream quiet for this many seconds gets an SSE comment, so proxies keep it open.
AFHOST_SSE_KEEPALIVE = env_float("AFHOST_SSE_KEEPALIVE", 15, minimum=0.01)
# Azure AI Foundry's hosted agents run one container per session, named by this variable: an
# invocation naming no agent_session_id belongs to it (as in Microsoft's host).
FOUNDRY_AGENT_SESSION_ID = env_str("FOUNDRY_AGENT_SESSION_ID")
# Packages whose classes a workflow's checkpoints may hold, besides agent_framework's and those of
# the package AFHOST_TARGET names (afhost.workflows).
AFHOST_CHECKPOINT_MODULES = env_list("AFHOST_CHECKPOINT_MODULES")
# Input items one create may send (OpenAI-style 400 above it).
AFHOST_MAX_INPUT_ITEMS = env_int("AFHOST_MAX_INPUT_ITEMS", 2048, minimum=1)
# Earlier turns a turn loads and hands its target, measured as their stored messages' JSON
# (characters): with the Responses `truncation: "auto"` (and in Telegram) the oldest turns are
# left out to fit; with "disabled" (OpenAI's default) a longer history fails the turn.
AFHOST_MAX_HISTORY_BYTES = env_int("AFHOST_MAX_HISTORY_BYTES", 16 * 1024 * 1024, minimum=1024)
# Turns one worker process runs at once. A turn mostly awaits its model and holds no thread and
# no database connection meanwhile, so this is sized for waiting, not for cores.
AFHOST_WORKER_CONCURRENCY = env_int("AFHOST_WORKER_CONCURRENCY", 250, minimum=1)
# A process renews the leases on the runs, conversations and chats it works on every third of
# this; the work of a process that died is taken over by another once its leases run out.
AFHOST_LEASE_SECONDS = env_float("AFHOST_LEASE_SECONDS", 30, minimum=1)

# django-q2's broker: the database (ORM) by default, or Redis when AFHOST_REDIS_URL is set (a
# worker then wakes the moment a task is queued, not at its next poll). Either way the queue
# only carries ids: the rows are the truth, and the sweepers queue again what a dead worker lost.
AFHOST_REDIS_URL = env_str("AFHOST_REDIS_URL")
_BROKER: dict = {"orm": "default", "broker_class": "afhost.queueing.DatabaseBroker"}
if AFHOST_REDIS_URL:
    if not AFHOST_REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured("AFHOST_REDIS_URL must be a redis://, rediss:// or unix:// URL.")
    import redis

    # django-q2 makes a Redis client for each task it queues: with one connection pool per
    # process (redis-py's pools start afresh after a fork) they do not each open a connection.
    # Only one broker may be set: django-q2 takes "orm" over "redis". A Redis that does not
    # answer fails a queueing within seconds (the sweepers recover its rows) instead of holding
    # the request for the system's TCP timeouts; the socket timeout stays above django-q2's 1 s
    # BLPOP. Options in the URL's query (?socket_timeout=...) take precedence.
    _BROKER = {
        "redis": {
            "connection_pool": redis.ConnectionPool.from_url(
                AFHOST_REDIS_URL, socket_connect_timeout=2, socket_timeout=5
            )
        }
    }
Q_CLUSTER = {
    "name": "afhost",
    **_BROKER,
    "workers": env_int("AFHOST_WORKERS", 2, minimum=1),
    "timeout": AFHOST_RUN_TIMEOUT,
    "retry": AFHOST_RUN_TIMEOUT + 60,
    # A task that raised is not redelivered: our services record the failure on the row.
    "ack_failures": True,
    # ORM broker: a worker that died mid-task gets its task redelivered once; the run then
    # reports the loss. Redis hands a task out once (no redelivery): the sweepers recover it.
    "max_attempts": 2,
    # ORM broker only: seconds between looks at an empty queue (Redis blocks until a task comes).
    "poll": env_float("AFHOST_QUEUE_POLL", 0.1),
    # Tasks a worker takes from the ORM queue per look: a burst is handed out in fewer round
    # trips (Redis hands them out one by one, each in one round trip).
    # A task taken by a worker that then dies is recovered by the sweepers, not by the queue.
    "bulk": 10,
    "catch_up": False,
    # The rows are the truth: successful tasks (nearly all) are not stored again; failed ones are.
    "save_limit": -1,
    # A worker process is replaced after this many tasks (django-q2's default is 500). Each task
    # only hands a job to the process's engine, and a replaced process gives the jobs in flight
    # a few seconds before it ends them, so replace processes rarely.
    "recycle": 100_000,
    "label": "Task queue",
}
# Pause between the demo agent's streamed words (seconds), so streaming is visible in a terminal.
AFHOST_DEMO_TOKEN_DELAY = env_float("AFHOST_DEMO_TOKEN_DELAY", 0.02)

# --- Telegram ----------------------------------------------------------------------------------
# The channel is on when TELEGRAM_BOT_TOKEN is set; the webhook then also needs its secret.
TELEGRAM_BOT_TOKEN = env_secret("TELEGRAM_BOT_TOKEN")
TELEGRAM_WEBHOOK_SECRET = env_secret("TELEGRAM_WEBHOOK_SECRET")
# How updates arrive: "webhook" (Telegram posts them; manage.py set_telegram_webhook) or
# "polling" (manage.py telegram_poll fetches them; `make run` starts it). Shown on the home page.
TELEGRAM_MODE = env_str("TELEGRAM_MODE", "webhook")
if TELEGRAM_BOT_TOKEN and not TELEGRAM_WEBHOOK_SECRET and not DEBUG:
    raise ImproperlyConfigured("TELEGRAM_WEBHOOK_SECRET must be set when TELEGRAM_BOT_TOKEN is.")
# python-telegram-bot's base_url: the token is appended (e.g. http://127.0.0.1:8081/bot for a
# self-hosted Bot API server). Files are fetched from the matching /file/bot URL.
TELEGRAM_API_BASE_URL = env_str("TELEGRAM_API_BASE_URL", "https://api.telegram.org/bot")
TELEGRAM_API_FILE_URL = env_str(
    "TELEGRAM_API_FILE_URL", TELEGRAM_API_BASE_URL.removesuffix("/bot") + "/file/bot"
)
# Conversations in groups: per_user, per_user_per_conversation or per_conversation.
TELEGRAM_CONVERSATION_SCOPE = env_str("TELEGRAM_CONVERSATION_SCOPE", "per_user_per_conversation")
# When the bot answers in groups: mention_only, command_only, mention_or_command or all.
TELEGRAM_ACCEPT_IN_GROUP = env_str("TELEGRAM_ACCEPT_IN_GROUP", "mention_only")
# Largest photo or document the bot downloads and hands to the agent, in bytes.
TELEGRAM_MAX_FILE_BYTES = env_int("TELEGRAM_MAX_FILE_BYTES", 10 * 1024 * 1024, minimum=0)
for _name, _value, _allowed in (
    (
        "TELEGRAM_CONVERSATION_SCOPE",
        TELEGRAM_CONVERSATION_SCOPE,
        ("per_user", "per_user_per_conversation", "per_conversation"),
    ),
    (
        "TELEGRAM_ACCEPT_IN_GROUP",
        TELEGRAM_ACCEPT_IN_GROUP,
        ("mention_only", "command_only", "mention_or_command", "all"),
    ),
    ("TELEGRAM_MODE", TELEGRAM_MODE, ("webhook", "polling")),
):
    if _value not in _allowed:
        raise ImproperlyConfigured(f"{_name} must be one of {', '.join(_allowed)}; got {_value!r}")

# --- Identity linking (Microsoft Entra ID) -----------------------------------------------------
# Linking is on when the tenant, client id and secret are all set. ENTRA_AUTHORITY points at
# another OpenID provider with Entra's URL layout (a local one in tests and demos).
ENTRA_TENANT_ID = env_str("ENTRA_TENANT_ID")
ENTRA_CLIENT_ID = env_str("ENTRA_CLIENT_ID")
ENTRA_CLIENT_SECRET = env_secret("ENTRA_CLIENT_SECRET")
ENTRA_AUTHORITY = env_str("ENTRA_AUTHORITY", "https://login.microsoftonline.com").rstrip("/")
# Where people reach this server (link pages in chat messages): scheme and host, no path.
AFHOST_PUBLIC_URL = env_str("AFHOST_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Minutes a link sent by the bot stays usable.
LINK_CHALLENGE_MINUTES = env_int("LINK_CHALLENGE_MINUTES", 10, minimum=1)

AUTHENTICATION_BACKENDS = [
    "social_core.backends.azuread_tenant.AzureADV2TenantOAuth2",
    "django.contrib.auth.backends.ModelBackend",
]
_ENTRA = f"{ENTRA_AUTHORITY}/{ENTRA_TENANT_ID}"
SOCIAL_AUTH_URL_NAMESPACE = "social"
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_KEY = ENTRA_CLIENT_ID
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_SECRET = ENTRA_CLIENT_SECRET
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_TENANT_ID = ENTRA_TENANT_ID
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_AUTHORIZATION_URL = f"{_ENTRA}/oauth2/v2.0/authorize"
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_ACCESS_TOKEN_URL = f"{_ENTRA}/oauth2/v2.0/token"
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_OPENID_CONFIGURATION_URL = (
    f"{_ENTRA}/v2.0/.well-known/openid-configuration"
)
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_JWKS_URI = f"{_ENTRA}/discovery/v2.0/keys"
# The stable object id, not the pairwise `sub`, names the principal.
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_ID_KEY = "oid"
SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_USE_PKCE = True
# Linking proves who a channel's user is; it never logs anyone into Django, creates users,
# associates accounts by email, or copies IdP values onto a local user.
SOCIAL_AUTH_PIPELINE = [
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    "linking.pipeline.redeem_challenge",
]
SOCIAL_AUTH_PROTECTED_USER_FIELDS = ["username", "first_name", "last_name", "email"]
SOCIAL_AUTH_RAISE_EXCEPTIONS = False
SOCIAL_AUTH_LOGIN_ERROR_URL = "/link/failed/"

# --- Delivery (answers pushed to other channels) -----------------------------------------------
# Attempts at one push before it fails (transient errors: network, 5xx, 429).
DELIVERY_MAX_ATTEMPTS = env_int("DELIVERY_MAX_ATTEMPTS", 6, minimum=1)
# Seconds before the first retry; doubles each time (with jitter), up to the maximum.
DELIVERY_BACKOFF = env_float("DELIVERY_BACKOFF", 2, minimum=0)
DELIVERY_MAX_BACKOFF = env_float("DELIVERY_MAX_BACKOFF", 300, minimum=0)

# --- A hosted model (AFHOST_TARGET=openai, azure-openai or openai-compatible) -----------------
# Read by those built-in targets only (afhost.model_presets, via agent-framework-openai).
# The model's name (OpenAI, OpenAI-compatible servers) or the deployment's name (Azure OpenAI).
AFHOST_MODEL = env_str("AFHOST_MODEL").strip()
# The agent's instructions (or AFHOST_INSTRUCTIONS_FILE); a request's own instructions follow.
AFHOST_INSTRUCTIONS = env_secret("AFHOST_INSTRUCTIONS")
# Sampling temperature, 0 to 2; unset, the model's default. A request's own temperature wins.
AFHOST_TEMPERATURE = (
    env_float("AFHOST_TEMPERATURE", 1, minimum=0) if env_str("AFHOST_TEMPERATURE").strip() else None
)
# responses or chat-completions; unset, responses (openai, azure-openai) or chat-completions
# (openai-compatible).
AFHOST_MODEL_API = env_str("AFHOST_MODEL_API").strip()
OPENAI_API_KEY = env_secret("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL").strip()
AZURE_OPENAI_ENDPOINT = env_str("AZURE_OPENAI_ENDPOINT").strip()
AZURE_OPENAI_API_KEY = env_secret("AZURE_OPENAI_API_KEY")
