"""LLM Tuner settings: one file, every value from the environment.

Without any variable set this runs the embedded default (SQLite, local media,
console email, a server-less Celery broker, local training). The README lists
the variables for production.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_decimal_str(name: str, default: str) -> str:
    value = env_str(name, default)
    try:
        if float(value) < 0:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a non-negative number, not {value!r}") from None
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value and urlparse(value).scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name} must start with one of {allowed}, not {value!r}")
    return value


# --- Core ---------------------------------------------------------------------

DEBUG = env_bool("DEBUG", True)
VAR_DIR = Path(env_str("LLMTUNER_VAR_DIR", str(BASE_DIR / "var")))
# The embedded default keeps its database, broker, cache and files here; a fresh clone has none.
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "django-insecure-embedded-default-only-never-use-this-in-production"

# Fernet keys (comma-separated, the first encrypts) for users' Hugging Face tokens; unset: one derived
# from SECRET_KEY (accounts/secrets.py).
HUB_TOKEN_ENCRYPTION_KEYS = env_list("HUB_TOKEN_ENCRYPTION_KEYS")
for _key in HUB_TOKEN_ENCRYPTION_KEYS:
    try:
        if len(base64.urlsafe_b64decode(_key.encode())) != 32:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(
            "HUB_TOKEN_ENCRYPTION_KEYS: each key must be a Fernet key (32 url-safe base64-encoded "
            "bytes; make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        ) from None
# Where pushes to the Hugging Face Hub go (a mirror or a stand-in can be set here).
HF_ENDPOINT = env_str("HF_ENDPOINT", "https://huggingface.co").rstrip("/")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.google",
    "accounts",
    "datasets_app",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "llmtuner.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.GoogleOnlyWhenConfiguredMiddleware",
]

ROOT_URLCONF = "llmtuner.urls"
WSGI_APPLICATION = "llmtuner.wsgi.application"

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
                "accounts.context_processors.login_options",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------

DATABASE_URL = env_url(
    "DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}", ("sqlite", "postgres", "postgresql")
)
# With persistent connections (CONN_MAX_AGE), each request first checks that its connection still
# works, so a database restart costs the requests made while it is down, not the ones after.
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 0, 0), conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A health check without a round trip, and prepared statements for the polled queries; turn
    # those off behind a pooler that loses them (PgBouncer before 1.21 in transaction mode).
    DATABASES["default"]["ENGINE"] = "llmtuner.postgresql"
    DATABASES["default"]["PREPARED_STATEMENTS"] = env_bool("DATABASE_PREPARED_STATEMENTS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout let the web process, worker and beat share one file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (allauth's rate limits need one that all processes share) ----------

CACHE_URL = env_url("CACHE_URL", "", ("redis", "rediss", "file", "locmem"))
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "llmtuner.cache.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL.startswith("locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Auth (django-allauth) ----------------------------------------------------

# Every page, and every 2 s poll of an open job page, needs the session and the signed-in user:
# both come from the shared cache, with the database as the record (accounts/sessions.py,
# accounts/backends.py).
AUTHENTICATION_BACKENDS = [
    "accounts.backends.CachedModelBackend",
    "accounts.backends.CachedAllauthBackend",
]
SESSION_ENGINE = "accounts.sessions"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_USER_MODEL_USERNAME_FIELD = "username"
_verification = env_str("ACCOUNT_EMAIL_VERIFICATION", "optional" if DEBUG else "mandatory")
if _verification not in ("mandatory", "optional", "none"):
    raise ImproperlyConfigured("ACCOUNT_EMAIL_VERIFICATION must be mandatory, optional or none")
ACCOUNT_EMAIL_VERIFICATION = _verification
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
# Failed logins: 10 a minute from one address; 5 in 5 minutes for one account from one address
# (the adapter keys it by address and account); 100 an hour for one account from everywhere.
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "login_failed_account": "100/h/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "change_password": "5/m/user",
}
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_LOGIN_ON_GET = False
GOOGLE_CLIENT_ID = env_str("GOOGLE_CLIENT_ID")
GOOGLE_CLIENT_SECRET = env_str("GOOGLE_CLIENT_SECRET")
if bool(GOOGLE_CLIENT_ID) != bool(GOOGLE_CLIENT_SECRET):
    raise ImproperlyConfigured("Set both GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET, or neither")
SOCIALACCOUNT_PROVIDERS = {
    "google": {
        "SCOPE": ["profile", "email"],
        "AUTH_PARAMS": {"access_type": "online"},
        "EMAIL_AUTHENTICATION": True,
        "APPS": (
            [{"client_id": GOOGLE_CLIENT_ID, "secret": GOOGLE_CLIENT_SECRET, "key": ""}]
            if GOOGLE_CLIENT_ID
            else []
        ),
    }
}
DEFAULT_MONTHLY_BUDGET_USD = env_decimal_str("DEFAULT_MONTHLY_BUDGET_USD", "50")

# --- Email --------------------------------------------------------------------

DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "LLM Tuner <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587, 1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# --- Files --------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"
# Partial uploads stream to files here (removed when their request ends; those a killed web
# process left are removed at the next start), and each task's scratch folder lives in
# TASK_TEMP_DIR (removed when the task ends, and at worker start: llmtuner/scratch.py).
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR") or str(VAR_DIR / "tmp" / "uploads")
TASK_TEMP_DIR = Path(env_str("TASK_TEMP_DIR", str(VAR_DIR / "tmp" / "tasks")))
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
AWS_S3_ENDPOINT_URL = env_url("AWS_S3_ENDPOINT_URL", "", ("http", "https")) or None
AWS_REGION = env_str("AWS_REGION", env_str("AWS_DEFAULT_REGION", "us-east-1"))
# Download links are presigned with SigV4 (botocore would sign them with SigV2, which newer
# regions refuse), on the bucket's regional host at AWS (the global one redirects for a new
# bucket); a custom endpoint keeps path-style URLs. django-storages reads these two for every
# S3 storage whose OPTIONS do not say otherwise.
AWS_S3_SIGNATURE_VERSION = "s3v4"
AWS_S3_ADDRESSING_STYLE = None if AWS_S3_ENDPOINT_URL else "virtual"
# Datasets: the upload limit is enforced while the body streams in; a .gz
# upload may expand to DATASET_MAX_DECOMPRESSED_MB. DATASET_TOKENIZER names a
# tokenizer.json to count tokens with instead of the bundled GPT-2 one.
DATASET_MAX_UPLOAD_MB = env_int("DATASET_MAX_UPLOAD_MB", 1024, 1)
DATASET_MAX_DECOMPRESSED_MB = env_int("DATASET_MAX_DECOMPRESSED_MB", 4 * DATASET_MAX_UPLOAD_MB, 1)
DATASET_TOKENIZER = env_str("DATASET_TOKENIZER") or None
if DATASET_TOKENIZER and not Path(DATASET_TOKENIZER).is_file():
    raise ImproperlyConfigured(f"DATASET_TOKENIZER must name a tokenizer.json, not {DATASET_TOKENIZER!r}")
# Each user's uploads and prepared samples together may take this much storage (a user's
# profile may say otherwise); a preparation is stopped after this long, and one whose worker
# has not written a heartbeat for DATASET_PREPARE_HEARTBEAT_TIMEOUT seconds is failed. (The time
# limit travels in each task message: the web processes that send it read it too.)
DATASET_STORAGE_QUOTA_MB = env_int("DATASET_STORAGE_QUOTA_MB", 5 * 1024, 1)
DATASET_PREPARE_TIME_LIMIT_SECONDS = env_int("DATASET_PREPARE_TIME_LIMIT_SECONDS", 3600, 10)
DATASET_PREPARE_HEARTBEAT_TIMEOUT = env_int("DATASET_PREPARE_HEARTBEAT_TIMEOUT", 300, 10)

_static_backend = (
    "django.contrib.staticfiles.storage.StaticFilesStorage"
    if DEBUG
    else "whitenoise.storage.CompressedManifestStaticFilesStorage"
)
if AWS_STORAGE_BUCKET_NAME:
    STORAGES = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": AWS_STORAGE_BUCKET_NAME,
                "endpoint_url": AWS_S3_ENDPOINT_URL,
                "region_name": AWS_REGION,
                "default_acl": "private",
                "file_overwrite": False,
                "querystring_auth": True,
                "querystring_expire": 600,
            },
        },
        "staticfiles": {"BACKEND": _static_backend},
    }
else:
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": _static_backend},
    }

# --- Celery -------------------------------------------------------------------

CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", "filesystem://", ("redis", "rediss", "filesystem"))
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# The longest training job we let run; the broker must not redeliver a task
# that is still legitimately running.
MAX_JOB_RUNTIME_SECONDS = env_int("MAX_JOB_RUNTIME_SECONDS", 48 * 3600, 60)
# What finetune.py reaches on this machine's training worker, in TFLOP/s (6 × parameters ×
# tokens/s), for the time estimate of local jobs; the default was measured on the development
# machine with a scratch model (see jobs/estimate.py). Measure yours the same way.
LOCAL_TRAINING_TFLOPS = float(env_decimal_str("LOCAL_TRAINING_TFLOPS", "0.03"))
if LOCAL_TRAINING_TFLOPS <= 0:
    raise ImproperlyConfigured("LOCAL_TRAINING_TFLOPS must be a positive number")
# How many processes a local job trains with (one per GPU, through torchrun): 0 = count the GPUs
# `nvidia-smi -L` lists on the worker (none: one process on the CPU). The web process reads it
# too, for the memory check's world size.
LOCAL_TRAINING_GPUS = env_int("LOCAL_TRAINING_GPUS", 0, 0)
# Memory of each of the local worker's GPUs, in GiB, for the memory check before launch and
# for offering QLoRA locally; 0 = the worker trains on CPU and its RAM is not checked.
LOCAL_GPU_MEMORY_GIB = float(env_decimal_str("LOCAL_GPU_MEMORY_GIB", "0"))
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_folder = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_folder),
        "data_folder_out": str(_broker_folder),
        "control_folder": str(VAR_DIR / "celery-control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": MAX_JOB_RUNTIME_SECONDS + 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Training runs for hours on its own queue, so short tasks never wait behind it; playground
# prompts and dataset preparation have theirs, so neither waits behind the other, nor behind
# the short tasks (emails, reapers, SageMaker polls) of the default queue.
# A worker must serve each queue: llmtuner/launch.py and docker-compose.yml start them.
CELERY_TASK_ROUTES = {
    "jobs.tasks.run_local_job": {"queue": "training"},
    "jobs.tasks.run_playground": {"queue": "playground"},
    "datasets_app.tasks.prepare_dataset": {"queue": "datasets"},
    "jobs.tasks.push_to_hub": {"queue": "exports"},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False  # a lost training run is reaped, not replayed
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_TRACK_STARTED = False
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Periodic work; each app adds its own entries here.
CELERY_IMPORTS = ("llmtuner.health",)
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "worker-heartbeat": {"task": "llmtuner.health.worker_heartbeat", "schedule": 60.0},
    "reap-stale-jobs": {"task": "jobs.tasks.reap_stale_jobs", "schedule": 30.0},
    "fail-stale-playground-runs": {"task": "jobs.tasks.fail_stale_playground_runs", "schedule": 60.0},
    "fail-stale-hub-pushes": {"task": "jobs.tasks.fail_stale_hub_pushes", "schedule": 300.0},
}
# A local job whose worker has not written a heartbeat for this long is failed.
LOCAL_JOB_HEARTBEAT_TIMEOUT = env_int("LOCAL_JOB_HEARTBEAT_TIMEOUT", 60, 10)
# Local training jobs one user may have running or queued at once (the user admin sets another
# figure for one user); the training slots are shared between users round-robin (jobs/queueing.py).
LOCAL_JOBS_PER_USER = env_int("LOCAL_JOBS_PER_USER", 5, 1)
# A job still queued after this long whose task the broker no longer holds (Redis restarted
# without persistence, or was down when the job was launched) is sent again.
QUEUED_JOB_RESEND_SECONDS = env_int("QUEUED_JOB_RESEND_SECONDS", 120, 10)
CELERY_BEAT_SCHEDULE["resend-lost-jobs"] = {"task": "jobs.tasks.resend_lost_jobs", "schedule": 60.0}
CELERY_BEAT_SCHEDULE["resend-lost-preparations"] = {
    "task": "datasets_app.tasks.resend_lost_preparations",
    "schedule": 60.0,
}
CELERY_BEAT_SCHEDULE["reap-stale-preparations"] = {
    "task": "datasets_app.tasks.reap_stale_preparations",
    "schedule": 60.0,
}
# Playground: each worker process keeps at most this many models loaded (least
# recently used goes first), and keeps downloaded tuned models on disk here.
PLAYGROUND_CACHE_MODELS = env_int("PLAYGROUND_CACHE_MODELS", 2, 1)
PLAYGROUND_CACHE_DIR = Path(env_str("PLAYGROUND_CACHE_DIR", str(VAR_DIR / "model-cache")))
# One generation (both models, loading included) is stopped after this long.
PLAYGROUND_TIME_LIMIT_SECONDS = env_int("PLAYGROUND_TIME_LIMIT_SECONDS", 600, 30)
# A push of a tuned model to the Hugging Face Hub is stopped after this (a 7B model is about 15 GB).
HUB_PUSH_TIME_LIMIT_SECONDS = env_int("HUB_PUSH_TIME_LIMIT_SECONDS", 4 * 3600, 60)
# One person's prompts must not hold up everyone's: each user may have this many prompts
# waiting or generating at once, and send this many a minute; a prompt is at most this long.
PLAYGROUND_RUNS_IN_FLIGHT = env_int("PLAYGROUND_RUNS_IN_FLIGHT", 3, 1)
PLAYGROUND_PROMPTS_PER_MINUTE = env_int("PLAYGROUND_PROMPTS_PER_MINUTE", 10, 1)
PLAYGROUND_MAX_PROMPT_CHARS = env_int("PLAYGROUND_MAX_PROMPT_CHARS", 4000, 1)

# --- AWS SageMaker ------------------------------------------------------------
# Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_PROFILE /
# an instance role); the region is AWS_REGION. SageMaker is offered once the role
# and a bucket are set; `manage.py check_sagemaker` checks the rest.
SAGEMAKER_ROLE_ARN = env_str("SAGEMAKER_ROLE_ARN")
_ROLE_ARN = r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+"
if SAGEMAKER_ROLE_ARN and not re.fullmatch(_ROLE_ARN, SAGEMAKER_ROLE_ARN):
    raise ImproperlyConfigured(
        "SAGEMAKER_ROLE_ARN must be an IAM role ARN (arn:aws:iam::<account>:role/<name>), "
        f"not {SAGEMAKER_ROLE_ARN!r}"
    )
# Jobs' code, data copies, checkpoints and models; the datasets bucket when unset.
SAGEMAKER_BUCKET = env_str("SAGEMAKER_BUCKET")
SAGEMAKER_POLL_SECONDS = env_int("SAGEMAKER_POLL_SECONDS", 30, 10)
# A poll that could not start in time is dropped rather than piled up behind the next.
CELERY_BEAT_SCHEDULE["poll-sagemaker-jobs"] = {
    "task": "jobs.tasks.poll_sagemaker_jobs",
    "schedule": float(SAGEMAKER_POLL_SECONDS),
    "options": {"expires": float(SAGEMAKER_POLL_SECONDS)},
}

# --- Security -----------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
HTTPS = env_bool("HTTPS", not DEBUG)
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
BEHIND_PROXY = env_bool("BEHIND_PROXY", not DEBUG)
if BEHIND_PROXY:
    # The proxy terminates TLS and says so in this header.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The rate limits key on the client's address: behind proxies it is the one the outermost of our
# TRUSTED_PROXY_COUNT proxies appended to X-Forwarded-For (what a client wrote there itself is
# further left, and ignored); with none, the peer's own address.
ALLAUTH_TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if BEHIND_PROXY else 0, 0)

# --- Misc ---------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Tests (and CI) set this so a missing PostgreSQL or Redis fails the run
# instead of being skipped.
REQUIRE_SERVICES = env_bool("LLMTUNER_REQUIRE_SERVICES", False)
