"""Throwaway Redis and PostgreSQL servers that fault tests start, kill and restart themselves.

They listen on free loopback ports, never on the shared 6379 / 5432, and keep no data past the
test: Redis with persistence off (a restart loses every queued message, as a production Redis
without persistence would), PostgreSQL in a temporary folder.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the
`postgres` user through runuser.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ThrowawayRedis:
    def __init__(self, folder: Path) -> None:
        if not shutil.which("redis-server"):
            pytest.fail("redis-server is needed for the fault tests (apt-get install redis-server)")
        self.port = free_port()
        self.folder = folder
        self.log = folder / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.folder),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _port_open(self.port), 10, f"Redis on port {self.port}", self.log)

    def kill(self) -> None:
        """SIGKILL: everything it held is gone, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        wait_for(lambda: not _port_open(self.port), 10, "Redis to go away")

    def stop(self) -> None:
        self.kill()


class ThrowawayPostgres:
    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.fail("PostgreSQL's initdb is needed for the fault tests (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="llmtuner-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.folder, "postgres")
        self._run(
            self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *command, timeout: float = 60) -> None:
        result = subprocess.run(
            [*self.as_postgres, *map(str, command)], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(f"{command[0]} failed: {result.stderr}{result.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.log, "-w", "start")
        wait_for(lambda: _port_open(self.port), 20, f"PostgreSQL on port {self.port}", self.log)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash: open connections are cut without goodbye."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> None:
        self._run(
            self.bin / "psql", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", database, "-c", sql
        )

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError):
                self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def worker_command(concurrency: int = 1, beat_schedule: Path | None = None) -> list[str]:
    from llmtuner.broker import QUEUES

    command = [
        sys.executable, "-m", "celery", "-A", "llmtuner", "worker",
        "-Q", ",".join(QUEUES), "--concurrency", str(concurrency), "--pool", "prefork",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
    ]  # fmt: skip
    if beat_schedule is not None:
        command += ["--beat", "--schedule", str(beat_schedule)]
    return command


def database_url_of_this_test() -> str:
    """The test database, for a worker process to share (the tests using it are transactional)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        db = connection.settings_dict
        host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        return f"postgres://{db['USER']}:{db['PASSWORD']}@{host}/{db['NAME']}"
    if connection.is_in_memory_db():
        pytest.skip("a worker process cannot share an in-memory SQLite test database")
    return f"sqlite:///{connection.settings_dict['NAME']}"


def start_worker(broker_url: str, log: Path, media_root: Path, **options) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmtuner.settings",
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": database_url_of_this_test(),
        "MEDIA_ROOT": str(media_root),
        "PYTHONUNBUFFERED": "1",
        **options.pop("env", {}),
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            worker_command(**options),
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for(lambda: b"ready." in log.read_bytes(), 60, "the Celery worker to start", log)
    return process


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@contextlib.contextmanager
def celery_app_on(broker_url: str):
    """Point this process's Celery app (what views and actions send with) at another broker."""
    from llmtuner.celery import app

    # Celery reads CELERY_BROKER_URL from the environment before its own configuration.
    before = app.conf.get("broker_url"), app.conf.task_always_eager, os.environ.get("CELERY_BROKER_URL")
    app.conf.broker_url, app.conf.task_always_eager = broker_url, False
    os.environ["CELERY_BROKER_URL"] = broker_url
    _drop_connections(app)
    try:
        assert app.connection_for_write().as_uri().endswith(broker_url.split("@")[-1].split("//")[-1])
        yield app
    finally:
        app.conf.broker_url, app.conf.task_always_eager = before[0], before[1]
        if before[2] is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = before[2]
        _drop_connections(app)


def _drop_connections(app) -> None:
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None
    # kombu keeps producer pools in a process-wide registry keyed by broker URL; one left
    # there would hand later tests the connection pool closed above.
    pools.reset()
