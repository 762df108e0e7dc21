"""PostgreSQL restarts under a running web process (gunicorn, production settings, persistent
connections): requests made while it is down get a 503 page quickly, and the web process serves
again as soon as it is back, without being restarted.

The database is a throwaway server on a free port (never the shared 5432).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from conftest import PASSWORD
from jobs.tests.throwaway import ThrowawayPostgres, free_port, stop_process_group, wait_for

pytestmark = [pytest.mark.services]

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def postgres():
    server = ThrowawayPostgres()
    try:
        server.start()
        server.psql("CREATE DATABASE llmtuner_fault")
        yield server
    finally:
        server.remove()


@pytest.fixture
def web(postgres, tmp_path):
    port = free_port()
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE="llmtuner.settings",
        DEBUG="false",
        SECRET_KEY="fault-test-secret-key-that-is-long-and-random-enough-0123456789",
        ALLOWED_HOSTS="127.0.0.1",
        HTTPS="false",
        BEHIND_PROXY="false",
        DATABASE_URL=postgres.url("llmtuner_fault"),
        CONN_MAX_AGE="600",  # one persistent connection, which the restart will break
        CACHE_URL="locmem://",
        ACCOUNT_EMAIL_VERIFICATION="none",
        LLMTUNER_VAR_DIR=str(tmp_path / "var"),
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run(
            [*manage, *command], cwd=BASE_DIR, env=env, check=True, capture_output=True, timeout=300
        )
    create = "from conftest import make_user; make_user('alice@example.com')"
    subprocess.run([*manage, "shell", "-c", create], cwd=BASE_DIR, env=env, check=True, timeout=120)
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "llmtuner.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "1", "--timeout", "60"],
            cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/health/"), 60, "gunicorn to start", log)
        process.base, process.log = base, log
        yield process
    finally:
        stop_process_group(process)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def logged_in(base: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/accounts/login/", timeout=10)
    response = session.post(
        f"{base}/accounts/login/",
        {
            "login": "alice@example.com",
            "password": PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        timeout=10,
        allow_redirects=False,
    )
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard/", response.text[:500]
    return session


def processes(web) -> set[int]:
    master = psutil.Process(web.pid)
    return {master.pid, *(child.pid for child in master.children(recursive=True))}


@pytest.mark.slow
def test_a_database_restart_costs_only_the_requests_made_while_it_is_down(postgres, web):
    session = logged_in(web.base)
    assert session.get(f"{web.base}/dashboard/", timeout=10).status_code == 200
    serving = processes(web)

    # A quick restart between two requests: the web process's connection is dead, and the
    # next request must not be the one to find out (CONN_HEALTH_CHECKS).
    postgres.stop("immediate")
    postgres.start()
    response = session.get(f"{web.base}/dashboard/", timeout=10)
    assert response.status_code == 200, response.text[:500]

    # Down for a while, with people using it: a 503 page, quickly, no traceback, nothing hangs.
    postgres.stop("immediate")
    for path in ("/dashboard/", "/jobs/", "/datasets/"):
        started = time.monotonic()
        response = session.get(f"{web.base}{path}", timeout=30)
        assert time.monotonic() - started < 10
        assert response.status_code == 503, (path, response.status_code, response.text[:500])
        assert "Back in a moment" in response.text and "Traceback" not in response.text
        assert response.headers["Retry-After"] == "10"
        assert "Content-Security-Policy" in response.headers
    health = requests.get(f"{web.base}/health/", timeout=30)
    assert health.status_code == 503 and health.json()["database"].startswith("error")

    postgres.start()
    response = session.get(f"{web.base}/dashboard/", timeout=10)
    assert response.status_code == 200, response.text[:500]
    assert "alice@example.com" in response.text  # the same session, still signed in
    assert requests.get(f"{web.base}/health/", timeout=10).json()["database"] == "ok"
    assert processes(web) == serving  # recovered by itself: the same master, the same worker


# --- The health check itself (llmtuner/postgresql), against the suite's own server ---


@pytest.fixture
def spare_connection():
    from django.db import connections

    wrapper = connections.create_connection("default")
    if wrapper.vendor != "postgresql":
        pytest.skip("the health check belongs to the PostgreSQL backend")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


@pytest.mark.django_db
def test_a_healthy_idle_connection_is_usable_without_a_round_trip(spare_connection, monkeypatch):
    from django.db.backends.postgresql.base import DatabaseWrapper

    def asked(self):
        raise AssertionError("an idle healthy connection was asked SELECT 1")

    monkeypatch.setattr(DatabaseWrapper, "is_usable", asked)

    assert spare_connection.is_usable()


@pytest.mark.django_db
def test_a_connection_the_server_ended_is_not_usable(spare_connection):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [spare_connection.connection.info.backend_pid])

    deadline = time.monotonic() + 5
    while spare_connection.is_usable() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spare_connection.is_usable()


# --- Prepared statements (llmtuner/postgresql), against the suite's own server ---


def prepared_statements(wrapper) -> list[tuple[str, int]]:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        return cursor.fetchall()


@pytest.fixture
def scratch_table(spare_connection):
    """A committed table of the spare connection's own (the test's connection is in a transaction)."""
    name = f"prepared_probe_{os.getpid()}"
    with spare_connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, label varchar(20))")
        cursor.execute(f"INSERT INTO {name} VALUES (1, 'one')")
    yield name
    with spare_connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.django_db
def test_a_prepared_cursor_plans_its_statement_once_per_connection(spare_connection, scratch_table):
    query = f"SELECT label FROM {scratch_table} WHERE id = %s"  # noqa: S608  # nosec B608
    for _ in range(3):
        with spare_connection.prepared_cursor() as cursor:
            cursor.execute(query, [1])
            assert cursor.fetchone() == ("one",)
    with spare_connection.cursor() as cursor:  # Django's own cursors prepare nothing
        cursor.execute(query, [1])

    assert prepared_statements(spare_connection) == [(query.replace("%s", "$1"), 3)]


@pytest.mark.django_db
def test_a_migration_that_changes_a_column_under_a_prepared_statement_costs_no_error(
    spare_connection, scratch_table
):
    from django.db import connections

    query = f"SELECT label FROM {scratch_table} WHERE id = %s"  # noqa: S608  # nosec B608
    with spare_connection.prepared_cursor() as cursor:
        cursor.execute(query, [1])
    migrator = connections.create_connection("default")
    try:
        with migrator.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {scratch_table} ALTER COLUMN label TYPE text")
    finally:
        migrator.close()

    with spare_connection.prepared_cursor() as cursor:
        cursor.execute(query, [1])  # PostgreSQL: "cached plan must not change result type"
        assert cursor.fetchone() == ("one",)


@pytest.mark.django_db
def test_prepared_statements_can_be_turned_off_for_a_pooler_that_loses_them(
    spare_connection, scratch_table, monkeypatch
):
    monkeypatch.setitem(spare_connection.settings_dict, "PREPARED_STATEMENTS", False)
    query = f"SELECT label FROM {scratch_table} WHERE id = %s"  # noqa: S608  # nosec B608
    with spare_connection.prepared_cursor() as cursor:
        cursor.execute(query, [1])
        assert cursor.fetchone() == ("one",)

    assert prepared_statements(spare_connection) == []
