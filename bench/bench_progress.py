"""How fast the job page's progress partial answers, under gunicorn on PostgreSQL.

    python bench/bench_progress.py                       # defaults below, about 3 minutes
    python bench/bench_progress.py --jobs 10000 --pages 200 --poll-seconds 30 --parts progress,logs,metrics

What it does, all on loopback and in a throwaway database:

1. creates a PostgreSQL database `llmtuner_bench_<pid>` (dropped at the end, whatever happens),
   migrates it, and fills it with `--jobs` training jobs (default 10,000) spread over 50 users,
   with loss points and log lines; the benchmark user owns `--pages` running jobs among them;
   then vacuums and analyzes it, as a running site's tables are;
2. starts gunicorn (`--workers`, default 2, sync workers) on 127.0.0.1 serving the project,
   with the shared cache on Redis (`--cache-url`, emptied first) as in production,
   plus one extra URL, `/bench/minimal/`, a minimal Django view (`HttpResponse("ok")`) that
   goes through the same middleware;
3. throughput: a closed loop of `--concurrency` clients asks, for `--seconds` each and in
   alternating rounds, the minimal view and the progress partial of a running job (logged in,
   `HX-Request`); requests per second of each, each round's ratio of the two and their median
   (target >= 0.4), with the best round of each;
4. polling: `--pages` simulated open job pages each ask for their job's progress partial
   every 2 s (open loop, each on its own schedule) for `--poll-seconds`; with `--parts`
   including logs and metrics, each page also polls its log tail and chart cursor, as the
   real page does. Latency percentiles and errors (target p99 < 50 ms, no errors).

The client runs on the same machine and takes CPU from the server; the numbers are what this
machine does with both, so compare them only with runs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem

# --- The server side: gunicorn imports this module and asks for `application` ---------------------


def minimal(request):
    from django.http import HttpResponse

    return HttpResponse("ok")


def minimal_logged_in(request):
    """The same, after loading the session and the user (the two queries every logged-in page makes)."""
    from django.http import HttpResponse

    return HttpResponse(f"ok {request.user.pk}")


def __getattr__(name: str):
    # PEP 562: built only when gunicorn asks, so the benchmark process itself never does this.
    if name == "urlpatterns":
        from django.urls import include, path

        return [
            path("bench/minimal/", minimal),
            path("bench/minimal-logged-in/", minimal_logged_in),
            path("", include("llmtuner.urls")),
        ]
    if name == "application":
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmtuner.settings")
        from django.conf import settings

        settings.ROOT_URLCONF = MODULE
        from llmtuner.wsgi import application  # as production serves it

        return application
    raise AttributeError(name)


# --- The benchmark process ------------------------------------------------------------------------


def server_env(database_url: str, cache_url: str, conn_max_age: int) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmtuner.settings",
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "HTTPS": "false",
        "BEHIND_PROXY": "false",
        "SECRET_KEY": "bench-only-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1",
        "CONN_MAX_AGE": str(conn_max_age),
        "CELERY_BROKER_URL": "filesystem://",
        "CACHE_URL": cache_url,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}",
    }


def create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(jobs: int, pages: int) -> dict:
    """Users, datasets and jobs; returns the benchmark user's session cookie and running job ids."""
    import django

    django.setup()
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.utils import timezone

    from datasets_app.models import Dataset
    from jobs.models import BaseModel, JobStatus, LogLine, MetricPoint, TrainingJob

    User = get_user_model()
    users = User.objects.bulk_create(
        User(username=f"user{i}", email=f"user{i}@example.com", password="!") for i in range(50)
    )
    datasets = Dataset.objects.bulk_create(
        Dataset(
            owner=user,
            name=f"Dataset of {user.username}",
            original_filename="data.csv",
            status=Dataset.Status.READY,
            train_file=f"users/{user.pk}/train.jsonl",
            stats={"samples": 10_000, "tokens": 2_000_000},
        )
        for user in users
    )
    model = BaseModel.objects.get(hub_id="scratch:tiny-gpt2")
    now = timezone.now()
    rng = random.Random(0)
    finals = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED]
    rows = []
    for i in range(jobs):
        owner_index = 0 if i < pages else rng.randrange(50)
        running = i < pages
        rows.append(
            TrainingJob(
                owner=users[owner_index],
                dataset=datasets[owner_index],
                base_model=model,
                name=f"Job {i}",
                hyperparameters={"base_model": "scratch:tiny-gpt2", "max_steps": 1000, "batch_size": 8},
                status=JobStatus.TRAINING if running else rng.choice(finals),
                status_message="Training" if running else "Done",
                step=rng.randrange(1, 1000),
                total_steps=1000,
                epoch=rng.random() * 3,
                loss=2 + rng.random(),
                eval_loss=2 + rng.random(),
                tokens_per_second=1000 + rng.random() * 500,
                eta_seconds=rng.randrange(10, 3000),
                started_at=now,
                heartbeat_at=now,
                log_seq=50,
            )
        )
    created = TrainingJob.objects.bulk_create(rows, batch_size=2000)
    running_ids = [job.pk for job in created[:pages]]
    MetricPoint.objects.bulk_create(
        (MetricPoint(job_id=pk, step=s * 10, loss=3 - s / 50) for pk in running_ids for s in range(50)),
        batch_size=5000,
    )
    LogLine.objects.bulk_create(
        (
            LogLine(job_id=pk, seq=s + 1, text=f"step {s}/1000 loss 2.5")
            for pk in running_ids
            for s in range(50)
        ),
        batch_size=5000,
    )
    bench_user = users[0]
    cache.clear()  # users cached by an earlier run's database, which had the same ids
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session["_auth_user_id"] = str(bench_user.pk)
    session["_auth_user_backend"] = settings.AUTHENTICATION_BACKENDS[0]
    session["_auth_user_hash"] = bench_user.get_session_auth_hash()
    session.create()
    from django.db import connection, connections

    total = TrainingJob.objects.count()
    # A settled database, as a running site has: otherwise autovacuum wakes for the fresh rows
    # in the middle of the rounds and takes CPU from them.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")
    connections.close_all()
    return {"cookie": session.session_key, "running": running_ids, "total": total}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(env: dict, port: int, workers: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            f"{MODULE}:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--backlog",
            "2048",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit("gunicorn exited at start") from None
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start within 60 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


async def closed_loop(base: str, path: str, cookie: str, concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    headers = {"Cookie": f"sessionid={cookie}", "HX-Request": "true"}

    async def client(session):
        nonlocal errors
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                async with session.get(base + path, headers=headers, allow_redirects=False) as response:
                    await response.read()
                    if response.status not in (200, 286):
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "errors": errors,
        **summary(latencies),
    }


async def poll_pages(base: str, cookie: str, jobs: list[int], parts: list[str], seconds: float) -> dict:
    import aiohttp

    latencies: dict[str, list[float]] = {part: [] for part in parts}
    errors: list[str] = []
    headers = {"Cookie": f"sessionid={cookie}", "HX-Request": "true"}
    paths = {
        "progress": "/jobs/{pk}/progress/",
        "logs": "/jobs/{pk}/logs/?after=50",
        "metrics": "/jobs/{pk}/metrics/?after=0",
    }
    start = time.monotonic()
    rng = random.Random(1)

    async def page(session, pk: int):
        tick = start + rng.random() * 2.0
        while tick < start + seconds:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            for part in parts:
                url = base + paths[part].format(pk=pk)
                t0 = time.perf_counter()
                try:
                    async with session.get(url, headers=headers, allow_redirects=False) as response:
                        await response.read()
                        if response.status not in (200, 286):
                            errors.append(f"{part} {response.status}")
                except aiohttp.ClientError as error:
                    errors.append(f"{part} {type(error).__name__}")
                latencies[part].append(time.perf_counter() - t0)
            tick += 2.0

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(page(session, pk) for pk in jobs))
    elapsed = time.monotonic() - start
    every = [x for values in latencies.values() for x in values]
    return {
        "requests": len(every),
        "rps": len(every) / elapsed,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        **summary(every),
        "by_part": {part: summary(values) for part, values in latencies.items()},
    }


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)

    return {
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(1000 * ordered[-1], 1),
        "mean_ms": round(1000 * statistics.fmean(ordered), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    parser.add_argument("--parts", default="progress", help="what each page polls: progress,logs,metrics")
    parser.add_argument("--conn-max-age", type=int, default=60, help="CONN_MAX_AGE of the server")
    parser.add_argument(
        "--cache-url",
        default="redis://127.0.0.1:6379/13",
        help="the shared cache (sessions, signed-in users), as in production; emptied at the start",
    )
    args = parser.parse_args()
    parts = [part for part in args.parts.split(",") if part]

    name = f"llmtuner_bench_{os.getpid()}"
    base_url = args.admin_url.rsplit("/", 1)[0]
    database_url = f"{base_url}/{name}"
    env = server_env(database_url, args.cache_url, args.conn_max_age)
    os.environ.update({k: v for k, v in env.items() if k not in ("PYTHONPATH",)})
    sys.path.insert(0, str(ROOT))
    create_database(args.admin_url, name)
    server = None
    try:
        started = time.monotonic()
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        data = seed(args.jobs, args.pages)
        print(
            f"database {name}: {data['total']:,} jobs, {args.pages} running for the benchmark user "
            f"(migrated and seeded in {time.monotonic() - started:.0f} s)"
        )
        port = free_port()
        server = start_gunicorn(env, port, args.workers)
        base = f"http://127.0.0.1:{port}"
        progress_path = f"/jobs/{data['running'][0]}/progress/"
        # Warm both workers (first requests import and compile templates).
        asyncio.run(closed_loop(base, progress_path, data["cookie"], args.concurrency, 2))
        asyncio.run(closed_loop(base, "/bench/minimal/", data["cookie"], args.concurrency, 2))

        print(
            f"\nThroughput: gunicorn {args.workers} sync workers, {args.concurrency} clients, "
            f"{args.rounds} rounds of {args.seconds:.0f} s each"
        )
        results: dict[str, list[dict]] = {"minimal": [], "logged-in": [], "progress": []}
        paths = (
            ("minimal", "/bench/minimal/"),
            ("logged-in", "/bench/minimal-logged-in/"),
            ("progress", progress_path),
        )
        for _ in range(args.rounds):
            for label, path in paths:
                result = asyncio.run(closed_loop(base, path, data["cookie"], args.concurrency, args.seconds))
                results[label].append(result)
                rps, p50, p99 = result["rps"], result["p50_ms"], result["p99_ms"]
                print(f"  {label:9s} {rps:8.1f} req/s  p50 {p50} ms  p99 {p99} ms  errors {result['errors']}")
        best = {label: max(r["rps"] for r in rounds) for label, rounds in results.items()}
        # Each round's progress against the minimal view measured just before it: the machine's
        # own swings (other tenants, CPU clock) move both alike, where the best of each may come
        # from a quiet moment for one and a busy one for the other. The verdict is their median.
        paired = [p["rps"] / m["rps"] for m, p in zip(results["minimal"], results["progress"], strict=True)]
        ratio = statistics.median(paired)
        print(
            f"  best: minimal {best['minimal']:.1f} req/s, minimal logged in {best['logged-in']:.1f} req/s, "
            f"progress partial {best['progress']:.1f} req/s; ratio of the bests "
            f"{best['progress'] / best['minimal']:.2f}"
        )
        verdict = "OK" if ratio >= 0.4 else "MISSED"
        print(
            f"  progress partial / minimal view, round by round: {', '.join(f'{r:.2f}' for r in paired)}; "
            f"median {ratio:.2f} (target >= 0.40) {verdict}; "
            f"/ minimal logged-in view: {best['progress'] / best['logged-in']:.2f}"
        )

        print(
            f"\nPolling: {args.pages} open job pages, every 2 s, polling {', '.join(parts)}, "
            f"for {args.poll_seconds:.0f} s"
        )
        poll = asyncio.run(poll_pages(base, data["cookie"], data["running"], parts, args.poll_seconds))
        print(
            f"  {poll['requests']:,} requests ({poll['rps']:.1f}/s), errors {poll['errors']} "
            f"{poll['error_examples'] or ''}"
        )
        print(
            f"  latency p50 {poll['p50_ms']} ms, p95 {poll['p95_ms']} ms, p99 {poll['p99_ms']} ms, "
            f"max {poll['max_ms']} ms (target p99 < 50 ms, no errors) "
            f"{'OK' if poll['p99_ms'] < 50 and not poll['errors'] else 'MISSED'}"
        )
        if len(parts) > 1:
            for part, figures in poll["by_part"].items():
                print(f"    {part:9s} p50 {figures['p50_ms']} ms  p99 {figures['p99_ms']} ms")
    finally:
        if server is not None:
            stop(server)
        drop_database(args.admin_url, name)
        print(f"\ndropped {name}")


if __name__ == "__main__":
    main()
