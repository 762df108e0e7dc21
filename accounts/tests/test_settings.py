"""Settings come from the environment; bad values are refused; production passes check --deploy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "x7!kq2p9#zv4m8r1t6w3y5u0e-production-secret-key-that-is-long-enough-1234",
    "ALLOWED_HOSTS": "tuner.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://tuner.example.com",
}


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DJANGO_ALLOW_ASYNC_UNSAFE")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_configuration_passes_deploy_check_with_no_warnings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {**PRODUCTION_ENV, "SECRET_KEY": ""}
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_bad_values_are_refused_with_the_variable_named():
    cases = {
        "DEBUG": ("maybe", "DEBUG must be true or false"),
        "CONN_MAX_AGE": ("soon", "CONN_MAX_AGE must be a whole number"),
        "DATABASE_URL": ("mysql://db/x", "DATABASE_URL must start with one of"),
        "CELERY_BROKER_URL": ("amqp://guest@localhost//", "CELERY_BROKER_URL must start with one of"),
        "DEFAULT_MONTHLY_BUDGET_USD": ("-5", "DEFAULT_MONTHLY_BUDGET_USD must be a non-negative number"),
        "GOOGLE_CLIENT_ID": ("only-the-id", "Set both GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET"),
    }
    for name, (value, message) in cases.items():
        result = run_manage("check", env={name: value})
        assert result.returncode != 0, name
        assert "ImproperlyConfigured" in result.stderr, name
        assert message in result.stderr, name


def test_embedded_default_needs_no_variables(settings):
    # Read straight from a fresh interpreter with no configuration at all.
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='llmtuner.settings'; django.setup();"
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE']); print(s.CELERY_BROKER_URL);"
        "print(s.STORAGES['default']['BACKEND']); print(s.EMAIL_BACKEND)"
    )
    keep = {"PATH", "HOME", "LANG"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "filesystem://",
        "django.core.files.storage.FileSystemStorage",
        "django.core.mail.backends.console.EmailBackend",
    ]


def test_bucket_switches_default_storage_to_private_s3():
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='llmtuner.settings'; django.setup();"
        "from django.conf import settings as s; o=s.STORAGES['default'];"
        "print(o['BACKEND'], o['OPTIONS']['default_acl'], o['OPTIONS']['file_overwrite'],"
        " o['OPTIONS']['endpoint_url'])"
    )
    env = {
        **os.environ,
        "AWS_STORAGE_BUCKET_NAME": "tuner-data",
        "AWS_S3_ENDPOINT_URL": "http://127.0.0.1:5000",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "storages.backends.s3.S3Storage",
        "private",
        "False",
        "http://127.0.0.1:5000",
    ]


def test_a_fresh_clone_migrates_with_no_var_folder_yet(tmp_path):
    var = tmp_path / "not-there-yet"
    keep = {"PATH", "HOME", "LANG"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=BASE_DIR,
        env={**env, "LLMTUNER_VAR_DIR": str(var)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (var / "db.sqlite3").exists()
