# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""A storm of SageMaker throttling: the poller backs off, and once it passes no job is lost.

Forty jobs train in a stub AWS account (the SageMaker engineer's `StubAccount`, which checks
every request against AWS's API model). For eight minutes every SageMaker and CloudWatch Logs
call is throttled, while in AWS the jobs keep logging and half of them finish. The poller must
stop hammering (a handful of calls in sixteen cycles, not one per cycle per kind) and change
no job on missing information; when the storm ends it must catch up on every change it could
not see: the finished jobs end completed with their whole log and cost, the others train on.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.core.cache.backends import base as cache_base
from django.core.cache.backends import locmem

from jobs.backends.sagemaker.budget import BACKOFF_KEY
from jobs.models import JobStatus, MetricPoint, TrainingJob
from jobs.tests.test_sagemaker_poll import T0, FakeClock, assert_within_budget, run_cycle
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    StubAccount,
    account,
    fake_aws,
    progress_line,
    sagemaker_job,
    sagemaker_settings,
)

pytestmark = pytest.mark.django_db

THROTTLED = ("ListTrainingJobs", "DescribeTrainingJob", "DescribeLogStreams", "GetLogEvents")
CYCLE = timedelta(seconds=30)


@pytest.fixture
def cache_clock(monkeypatch):
    """The cache's expiry clock follows the poll cycles (back-offs are cache entries with a TTL)."""
    clock = SimpleNamespace(now=1_000_000.0)
    fake_time = SimpleNamespace(time=lambda: clock.now)
    monkeypatch.setattr(cache_base, "time", fake_time)
    monkeypatch.setattr(locmem, "time", fake_time)
    return clock


def test_a_throttling_storm_is_waited_out_and_loses_no_job(owner, account: StubAccount, cache_clock):
    clock = FakeClock()
    jobs = [sagemaker_job(owner, name=f"Job {i}") for i in range(40)]
    names = {job.pk: job.sagemaker_job_name for job in jobs}
    for job in jobs:
        account.add_job(names[job.pk], "Training", lines=[progress_line("start", total_steps=100)])
        account.log(names[job.pk], progress_line("progress", step=10, total_steps=100, loss=3.0))
    at = T0

    def cycle():
        nonlocal at
        at += CYCLE
        cache_clock.now += CYCLE.total_seconds()
        before = account.calls.copy()
        report = run_cycle(clock, at)
        assert_within_budget(report)
        return report, account.calls - before

    report, _ = cycle()
    assert report.throttled == set()
    assert TrainingJob.objects.filter(status=JobStatus.TRAINING).count() == 40

    # --- the storm: eight minutes of ThrottlingException on every call -----------------------
    for operation in THROTTLED:
        account.throttle[operation] = 10**6
    finishing = jobs[:20]
    attempted = []
    for number in range(16):
        if number == 4:  # meanwhile, in AWS: more progress for all, and half of them finish
            for job in jobs:
                account.log(names[job.pk], progress_line("progress", step=90, total_steps=100, loss=1.5))
            for job in finishing:
                account.log(names[job.pk], progress_line("progress", step=100, total_steps=100, loss=1.2))
                account.change(
                    names[job.pk],
                    "Completed",
                    "Completed",
                    BillableTimeInSeconds=600,
                    TrainingTimeInSeconds=600,
                )
        report, calls = cycle()
        attempted.append(sum(calls.values()))
        # At most one call of a kind per cycle reaches AWS once it throttles: the rest wait.
        assert all(count <= 1 for count in calls.values()), calls
        assert TrainingJob.objects.filter(status=JobStatus.TRAINING).count() == 40  # nothing guessed

    # Backed off: most cycles send nothing at all, and the gaps grow (1, 2, 4, 8 cycles).
    assert sum(attempted) <= 4 * 6, attempted
    assert attempted.count(0) >= 10, attempted
    tries = [number for number, calls in enumerate(attempted) if calls]
    gaps = [later - earlier for earlier, later in zip(tries, tries[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] >= 4, attempted
    assert MetricPoint.objects.filter(step=90).count() == 0

    # --- the storm passes -----------------------------------------------------------------------
    account.throttle.clear()
    recovery = 0
    while (
        TrainingJob.objects.filter(pk__in=[job.pk for job in finishing])
        .exclude(status=JobStatus.COMPLETED)
        .exists()
        or MetricPoint.objects.filter(step=90).count() < 40
    ):
        report, _ = cycle()
        recovery += 1
        assert recovery <= 12, (recovery, report.throttled, report.calls)

    for job in jobs:
        job.refresh_from_db()
    done = [job for job in jobs if job.status == JobStatus.COMPLETED]
    assert {job.pk for job in done} == {job.pk for job in finishing}
    assert all(job.cost_usd == Decimal("0.2347") and job.step == 100 for job in done)
    still = [job for job in jobs if job not in done]
    assert all(job.status == JobStatus.TRAINING and job.step == 90 for job in still)
    # Every line logged during the storm was read, once.
    for job in jobs:
        steps = sorted(MetricPoint.objects.filter(job=job, loss__isnull=False).values_list("step", flat=True))
        assert steps == ([10, 90, 100] if job in done else [10, 90]), (job.name, steps)
    assert cache.get(BACKOFF_KEY.format("describe") + ":level") is None  # clean cycles reset it
