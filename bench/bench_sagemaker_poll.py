"""AWS calls per minute of the SageMaker poller against 1, 10, 100 and 1,000 active jobs.

    python bench/bench_sagemaker_poll.py                 # 1, 10, 100, 1000 jobs
    python bench/bench_sagemaker_poll.py --jobs 1000     # one size only

No AWS: the account is `StubAccount` (jobs/tests/test_sagemaker_support.py),
which answers at the boto client boundary after botocore has validated each
request, and counts them. A throwaway SQLite database holds the jobs. Time is
simulated: a cycle every 30 s (the beat schedule), the poller's pacing sleeps
on a fake clock, so the figures are what a real worker would send.

For each size, three phases:
- start: every job has just been submitted (never described), until all are;
- steady: 10 minutes of training with a log line per job per cycle, nothing else changing;
- finish: every job completes at once, until all are completed here.
Reported: calls per minute by operation in each phase, the most calls in one
cycle, the paced length of the longest cycle (it must fit in 30 s), and the
real time a cycle took in this process (database work included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORKDIR = tempfile.mkdtemp(prefix="bench-sagemaker-")
os.environ.update(
    DJANGO_SETTINGS_MODULE="llmtuner.settings",
    DATABASE_URL=f"sqlite:///{WORKDIR}/db.sqlite3",
    LLMTUNER_VAR_DIR=WORKDIR,
    CACHE_URL="locmem://",
    CELERY_TASK_ALWAYS_EAGER="true",
    SAGEMAKER_ROLE_ARN="arn:aws:iam::123456789012:role/llmtuner-sagemaker",
    SAGEMAKER_BUCKET="llmtuner-bench",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    LOG_LEVEL="WARNING",
)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"  # finished-job emails stay here

from django.core.cache import cache  # noqa: E402
from django.core.management import call_command  # noqa: E402

from jobs.backends import sagemaker as sm  # noqa: E402
from jobs.backends.sagemaker import clients  # noqa: E402
from jobs.models import JobStatus, TrainingJob  # noqa: E402
from jobs.tests.test_sagemaker_support import StubAccount, offline_session, progress_line, sagemaker_job  # noqa: E402

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CYCLE = timedelta(seconds=30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(size: int, owner) -> dict:
    TrainingJob.objects.all().delete()
    cache.clear()
    client = sm.AWS(offline_session())
    clients._aws = client
    account = StubAccount(client.session)
    account.clock = T0
    jobs = [sagemaker_job(owner, name=f"Job {i}") for i in range(size)]
    for job in jobs:
        account.add_job(
            job.sagemaker_job_name, "Training", lines=[progress_line("progress", step=1, total_steps=99)]
        )
    clock = FakeClock()
    at = T0
    phases: dict[str, dict] = {}

    def cycle(stats: dict) -> None:
        nonlocal at
        at += CYCLE
        account.clock = at
        started, paced = time.perf_counter(), clock.now
        report = sm.poll_jobs(now=at, sleep=clock.sleep, clock=clock)
        stats["wall"] = max(stats.get("wall", 0.0), time.perf_counter() - started)
        stats["paced"] = max(stats.get("paced", 0.0), clock.now - paced)
        stats["max_calls"] = max(stats.get("max_calls", 0), report.total_calls)
        stats["cycles"] = stats.get("cycles", 0) + 1
        stats.setdefault("calls", Counter()).update(report.calls)

    ids = [job.pk for job in jobs]
    phases["start"] = stats = {}
    while TrainingJob.objects.filter(pk__in=ids, sagemaker_described_at=None).exists():
        cycle(stats)

    phases["steady"] = stats = {}
    for step in range(20):
        for job in jobs:
            account.log(
                job.sagemaker_job_name, progress_line("progress", step=step + 2, total_steps=99, loss=2.0)
            )
        cycle(stats)

    phases["finish"] = stats = {}
    for job in jobs:
        account.change(job.sagemaker_job_name, "Completed", "Completed", BillableTimeInSeconds=600)
    while TrainingJob.objects.filter(pk__in=ids).exclude(status=JobStatus.COMPLETED).exists():
        cycle(stats)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 10, 100, 1000])
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    from jobs.tests.conftest import make_ready_dataset

    owner = get_user_model().objects.create_user("bench", "bench@example.com", "x")
    make_ready_dataset(owner)
    budget = sm.PollBudget()
    print(
        f"budget per 30 s cycle: {budget.list_pages} ListTrainingJobs pages ({budget.list_per_second}/s), "
        f"{budget.describes} DescribeTrainingJob ({budget.describe_per_second}/s), "
        f"{budget.log_calls} CloudWatch Logs reads ({budget.log_per_second}/s)"
    )
    header = (
        f"{'jobs':>5} {'phase':>7} {'cycles':>6} {'calls/min':>9} {'list':>6} {'describe':>8} {'logs':>6} "
        f"{'max/cycle':>9} {'paced s':>7} {'cpu s':>6}"
    )
    print(header)
    for size in args.jobs:
        for phase, stats in run(size, owner).items():
            minutes = stats["cycles"] * CYCLE.total_seconds() / 60
            calls = stats["calls"]
            logs = calls["GetLogEvents"] + calls["DescribeLogStreams"]
            print(
                f"{size:>5} {phase:>7} {stats['cycles']:>6} {sum(calls.values()) / minutes:>9.1f} "
                f"{calls['ListTrainingJobs'] / minutes:>6.1f} {calls['DescribeTrainingJob'] / minutes:>8.1f} "
                f"{logs / minutes:>6.1f} {stats['max_calls']:>9} {stats['paced']:>7.1f} {stats['wall']:>6.2f}"
            )


if __name__ == "__main__":
    main()
