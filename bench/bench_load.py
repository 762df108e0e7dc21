"""Load: simultaneous users uploading a dataset and polling their jobs, against gunicorn and PostgreSQL.

    python bench/bench_load.py                      # 50 users for 3 minutes
    python bench/bench_load.py --users 20 --seconds 60

Everything is throwaway and on loopback: a database created on the PostgreSQL server named by
--admin-url (and dropped at the end), a Redis on a free port with persistence off, one Celery
worker preparing the uploads, and gunicorn serving the production settings (DEBUG off).

Each user (signed in beforehand) opens the datasets page, uploads a CSV (multipart, with its CSRF token) and
then, until the time is up, polls as the pages do every 2 s: its dataset's status partial (until
it answers 286), the jobs list partial, and the progress partial of one of its jobs; the
dashboard now and then. Every request's latency and status is recorded.

Printed: requests/s, p50/p95/p99 latency per kind of request and overall, errors (any status
>= 400 other than 286, or no answer), and whether every upload became a ready dataset with
all its rows (nothing lost).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
ROWS = 400
STOP_POLLING = 286


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def csv_for(user: int) -> bytes:
    lines = ["question,answer"] + [
        f"User {user} question {i}: what is {i} + {i}?,{2 * i}" for i in range(ROWS)
    ]
    return ("\n".join(lines) + "\n").encode()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []

    def record(self, kind: str, seconds: float, status: int | None, detail: str = "") -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if status is None or (status >= 400 and status != STOP_POLLING):
                self.errors[kind] += 1
                if len(self.samples) < 10:
                    self.samples.append(f"{kind}: {status} {detail[:200]}")


class User(threading.Thread):
    def __init__(self, number: int, base: str, stats: Stats, until: float, start_barrier, session_key: str):
        super().__init__(daemon=True)
        self.number, self.base, self.stats, self.until = number, base, stats, until
        self.barrier = start_barrier
        self.session = requests.Session()
        # Signed in beforehand: allauth allows 30 logins a minute from one address, and every
        # simulated user comes from 127.0.0.1.
        self.session.cookies.set("sessionid", session_key, domain="127.0.0.1")
        self.dataset_url = ""
        self.job_ids: list[int] = []
        self.failure = ""

    def request(self, kind: str, method: str, path: str, **kwargs) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response = self.session.request(method, self.base + path, timeout=60, **kwargs)
        except requests.RequestException as error:
            self.stats.record(kind, time.perf_counter() - started, None, repr(error))
            return None
        self.stats.record(kind, time.perf_counter() - started, response.status_code, response.text[:200])
        return response

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # noqa: BLE001 - reported, counted as a failed user
            self.failure = repr(error)

    def _run(self) -> None:
        self.barrier.wait()  # everyone starts uploading at once
        page = self.request("datasets page", "GET", "/datasets/")
        if page is None or page.status_code != 200:
            raise RuntimeError(f"the datasets page answered {getattr(page, 'status_code', None)}")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = self.request(
            "upload",
            "POST",
            "/datasets/upload/",
            data={
                "csrfmiddlewaretoken": token,
                "format": "auto",
                "txt_mode": "line",
                "validation_percent": "5",
            },
            files={"file": (f"user{self.number}.csv", csv_for(self.number), "text/csv")},
            headers={"Referer": self.base + "/datasets/"},
            allow_redirects=False,
        )
        if response is None or response.status_code != 302:
            raise RuntimeError(f"upload answered {getattr(response, 'status_code', None)}")
        self.dataset_url = response.headers["Location"]
        jobs = self.request("jobs page", "GET", "/jobs/")
        self.job_ids = [int(pk) for pk in re.findall(r'data-job="(\d+)"', jobs.text)]
        htmx = {"HX-Request": "true"}
        dataset_done = False
        tick = 0
        time.sleep(random.random() * 2)  # the pages' timers are not in step
        while time.monotonic() < self.until:
            if not dataset_done:
                status = self.request(
                    "dataset status partial", "GET", f"{self.dataset_url}status/", headers=htmx
                )
                dataset_done = status is not None and status.status_code == STOP_POLLING
            self.request("jobs list partial", "GET", "/jobs/", headers=htmx)
            if self.job_ids:
                job = self.job_ids[tick % len(self.job_ids)]
                self.request("job progress partial", "GET", f"/jobs/{job}/progress/", headers=htmx)
            if tick % 10 == 0:
                self.request("dashboard", "GET", "/dashboard/")
            tick += 1
            time.sleep(2)


SETUP = """
from django.test import Client
from conftest import make_user
from jobs.models import JobStatus
from jobs.tests.conftest import make_job, make_ready_dataset
for n in range({users}):
    user = make_user(f"user{{n}}@example.com")
    dataset = make_ready_dataset(user, name="Warm-up")
    make_job(user, dataset, name="Training now", status=JobStatus.TRAINING, step=40, total_steps=100)
    make_job(user, dataset, name="Done", status=JobStatus.COMPLETED, step=100, total_steps=100)
    client = Client()
    client.force_login(user)
    print("SESSION", client.cookies["sessionid"].value)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=180, help="how long the users poll (default 180)")
    parser.add_argument("--admin-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    # As docker-compose.yml runs it.
    parser.add_argument("--gunicorn-workers", type=int, default=3)
    parser.add_argument("--gunicorn-threads", type=int, default=4)
    parser.add_argument("--keep-alive", type=int, default=5, help="gunicorn --keep-alive, seconds")
    args = parser.parse_args()
    if not 1 <= args.users <= 200 or not 10 <= args.seconds <= 1800:
        raise SystemExit("--users must be 1..200 and --seconds 10..1800")
    if urlparse(args.admin_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the database server must be on loopback")
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is needed")

    name = f"llmtuner_bench_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="llmtuner-bench-"))
    processes: list[subprocess.Popen] = []
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        return run(args, database_url, work, processes)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


def run(args, database_url: str, work: Path, processes: list[subprocess.Popen]) -> int:
    redis_port, web_port = free_port(), free_port()
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE="llmtuner.settings",
        DEBUG="false",
        SECRET_KEY="bench-secret-key-long-and-random-enough-0123456789-abcdefghijklmnop",
        ALLOWED_HOSTS="127.0.0.1",
        HTTPS="false",
        BEHIND_PROXY="false",
        DATABASE_URL=database_url,
        CONN_MAX_AGE="60",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        CACHE_URL=f"redis://127.0.0.1:{redis_port}/1",
        ACCOUNT_EMAIL_VERIFICATION="none",
        LLMTUNER_VAR_DIR=str(work / "var"),
        MEDIA_ROOT=str(work / "media"),
        PYTHONUNBUFFERED="1",
    )

    def spawn(command: list[str], log: str) -> subprocess.Popen:
        with open(work / log, "wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        processes.append(process)
        return process

    redis = [
        "redis-server",
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    spawn(redis, "redis.log")
    manage = [sys.executable, "manage.py"]
    print(f"Setting up: database, static files, {args.users} users with two jobs each…", flush=True)
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run([*manage, *command], cwd=ROOT, env=env, check=True, capture_output=True)
    setup = subprocess.run(
        [*manage, "shell", "-c", SETUP.format(users=args.users)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    sessions = [line.split()[1] for line in setup.stdout.splitlines() if line.startswith("SESSION ")]
    spawn([sys.executable, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "default", "--concurrency", "2",
           "--without-gossip", "--without-mingle", "-l", "WARNING"], "worker.log")  # fmt: skip
    spawn([sys.executable, "-m", "gunicorn", "llmtuner.wsgi", "--bind", f"127.0.0.1:{web_port}",
           "--workers", str(args.gunicorn_workers), "--threads", str(args.gunicorn_threads),
           "--worker-class", "gthread", "--timeout", "120", "--keep-alive", str(args.keep_alive)],
          "gunicorn.log")  # fmt: skip
    base = f"http://127.0.0.1:{web_port}"
    wait_until(lambda: requests.get(f"{base}/health/", timeout=2).status_code == 200, 60, "gunicorn")

    stats = Stats()
    barrier = threading.Barrier(args.users)
    started = time.monotonic()
    until = started + args.seconds
    users = [User(n, base, stats, until, barrier, sessions[n]) for n in range(args.users)]
    print(f"{args.users} users for {args.seconds} s against gunicorn ({args.gunicorn_workers} workers × "
          f"{args.gunicorn_threads} threads, keep-alive {args.keep_alive} s)…", flush=True)  # fmt: skip
    for user in users:
        user.start()
    for user in users:
        user.join(args.seconds + 300)
    elapsed = time.monotonic() - started

    # Nothing lost: every upload is a ready dataset with all its rows.
    deadline = time.monotonic() + 120
    with psycopg.connect(database_url.replace("postgres://", "postgresql://"), autocommit=True) as db:
        while True:
            rows = db.execute(
                "SELECT status, stats->>'rows', stats->>'samples', prepared_at - created"
                " FROM datasets_app_dataset WHERE name <> 'Warm-up'"
            ).fetchall()
            if all(row[0] in ("ready", "failed") for row in rows) or time.monotonic() > deadline:
                break
            time.sleep(1)
    ready = [row for row in rows if row[0] == "ready" and int(row[1] or 0) == ROWS]
    waits = sorted(row[3].total_seconds() for row in rows if row[3] is not None)

    all_latencies = [value for values in stats.latencies.values() for value in values]
    total = len(all_latencies)
    errors = sum(stats.errors.values())
    print(f"\n{total:,} requests in {elapsed:.0f} s: {total / elapsed:.1f} requests/s, {errors} errors")
    print(f"{'request':<24}{'count':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")

    def line(kind: str, values: list[float], errors: int) -> str:
        figures = [percentile(values, p) * 1000 for p in (0.5, 0.95, 0.99)] + [max(values) * 1000]
        return f"{kind:<24}{len(values):>8}" + "".join(f"{f:>9.0f}" for f in figures) + f"{errors:>8}"

    for kind, values in sorted(stats.latencies.items(), key=lambda item: -len(item[1])):
        print(line(kind, values, stats.errors.get(kind, 0)))
    print(line("all", all_latencies, errors))
    failed_users = [user.failure for user in users if user.failure]
    print(f"\nUploads: {len(rows)} datasets for {args.users} users; {len(ready)} ready with all {ROWS} rows")
    if waits:
        print(f"Upload to ready: median {statistics.median(waits):.1f} s, slowest {waits[-1]:.1f} s")
    for sample in stats.samples:
        print(f"  error: {sample}")
    for failure in failed_users[:5]:
        print(f"  user failed: {failure}")
    ok = not errors and not failed_users and len(rows) == len(ready) == args.users
    print("\nOK: no error, nothing lost." if ok else "\nNOT OK (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
