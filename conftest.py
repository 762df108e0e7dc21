"""Fixtures shared by every app's tests: personas, real services, a browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

BASE_DIR = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true")


def pytest_configure(config):
    if django_settings.REQUIRE_SERVICES:
        engine = django_settings.DATABASES["default"]["ENGINE"]
        if "postgresql" not in engine:
            raise pytest.UsageError(
                "LLMTUNER_REQUIRE_SERVICES is set but DATABASE_URL is not PostgreSQL: "
                f"the suite would run on {engine}."
            )
        if not django_settings.CELERY_BROKER_URL.startswith("redis"):
            raise pytest.UsageError("LLMTUNER_REQUIRE_SERVICES is set but CELERY_BROKER_URL is not Redis.")


@pytest.fixture(autouse=True)
def _isolated_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    from django.core.cache import cache

    from llmtuner.celery import app

    cache.clear()
    # Tasks queued in unit tests run in-process (and only once their transaction
    # commits); tests that need the real broker use `celery_worker_process`.
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield


@pytest.fixture
def fake_aws_credentials(monkeypatch):
    """Credentials moto accepts, so no test can reach a real AWS account with the machine's own."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


PASSWORD = "correct-horse-battery-staple-42"


def make_user(email: str, **extra):
    from allauth.account.models import EmailAddress
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        username=email.split("@")[0], email=email, password=PASSWORD, **extra
    )
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


@pytest.fixture
def owner(db):
    return make_user("alice@example.com")


@pytest.fixture
def outsider(db):
    return make_user("mallory@example.com")


@pytest.fixture
def staff(db):
    return make_user("operator@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def outsider_client(client, outsider):
    client.force_login(outsider)
    return client


def redis_broker_url() -> str | None:
    url = django_settings.CELERY_BROKER_URL
    if url.startswith("redis"):
        return url
    if django_settings.REQUIRE_SERVICES:
        pytest.fail("CELERY_BROKER_URL must point at Redis when services are required")
    return None


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path, settings):
    """A real `celery worker` process on the real Redis broker, sharing the test database.

    Tests using it need transactional_db so the worker sees committed rows.
    """
    broker = redis_broker_url()
    if broker is None:
        pytest.skip("needs CELERY_BROKER_URL on Redis")
    from django.db import connection

    from llmtuner.broker import QUEUES

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmtuner.settings",
        "CELERY_BROKER_URL": broker,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    if connection.vendor == "postgresql":
        db = connection.settings_dict
        host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        env["DATABASE_URL"] = f"postgres://{db['USER']}:{db['PASSWORD']}@{host}/{db['NAME']}"
    elif connection.is_in_memory_db():
        pytest.skip("a worker process cannot share an in-memory SQLite test database")
    else:
        env["DATABASE_URL"] = f"sqlite:///{connection.settings_dict['NAME']}"
    from llmtuner.celery import app

    app.conf.task_always_eager = False
    _purge_queues(broker)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "llmtuner",
                "worker",
                "-Q",
                ",".join(QUEUES),
                "--concurrency",
                "2",
                "--pool",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "INFO",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: b"ready." in log_path.read_bytes(), 60, "the Celery worker to start", log_path)
        process.log_path = log_path
        yield process
    finally:
        _stop(process)


def _purge_queues(broker: str) -> None:
    import redis

    from llmtuner.broker import QUEUES

    client = redis.Redis.from_url(broker)
    for queue in QUEUES:
        client.delete(queue)


def _wait_for(condition, timeout: float, what: str, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not shutil.which(CHROMIUM):
        if IN_CI or django_settings.REQUIRE_SERVICES:
            pytest.fail(f"{CHROMIUM} is required in CI (apt-get install chromium chromium-driver)")
        pytest.skip("Chromium is not installed")
    return CHROMIUM


@pytest.fixture
def page(chromium_path, live_server, monkeypatch):
    """A Playwright page in real headless Chromium; `page.base_url` is the live server."""
    # Playwright's sync API runs an event loop in this thread; the ORM calls
    # that tests make beside it are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        context = browser.new_context(base_url=live_server.url)
        context.set_default_timeout(15_000)
        page = context.new_page()
        page.base_url = live_server.url
        try:
            yield page
        finally:
            context.close()
            browser.close()
