"""Polling (Celery beat, `poll_jobs`): one `ListTrainingJobs` (paged) finds what changed since the
last poll, `DescribeTrainingJob` runs only for those, for jobs never described and, slowly, for the
rest as a safety net; then the jobs' logs are read (`logs.py`). Every kind of call has a per-cycle
budget and a pace, and a throttled kind backs off for the next cycles (`budget.py`), so 1,000
running jobs stay well inside AWS's rate limits.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from botocore.exceptions import ClientError
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from jobs import lifecycle, pricing
from jobs.backends.sagemaker.apply import apply_description
from jobs.backends.sagemaker.budget import OutOfBudget, PollBudget, PollCalls, PollReport, Throttled
from jobs.backends.sagemaker.config import AWS_ACTIVE, AWS_FINAL, JOB_NAME_PREFIX, is_configured, job_name
from jobs.backends.sagemaker.errors import TRANSIENT_CODES, error_code, is_not_found
from jobs.backends.sagemaker.logs import LogReader
from jobs.backends.sagemaker.stop import stop_refused
from jobs.models import Backend, JobStatus, TrainingJob

logger = logging.getLogger(__name__)

S = JobStatus
LOCK_KEY = "sagemaker:poll-lock"
LOCK_SECONDS = 300
WATERMARK_KEY = "sagemaker:poll-watermark"
# LastModifiedTime is eventually consistent in ListTrainingJobs: list again a little before the last change.
WATERMARK_OVERLAP = timedelta(seconds=120)
# A job nobody saw change is described again after this long anyway.
STALE_DESCRIBE_AFTER = timedelta(minutes=30)
STOPPING_DESCRIBE_AFTER = timedelta(minutes=2)
# A job claimed for submission that never reached SageMaker (its worker died) is settled after this long.
ORPHAN_AFTER = timedelta(minutes=20)
# A stop that AWS has not seen this long after it was asked for (its task was lost with the broker,
# or gave up) is sent again by the poller, and again at most this often.
STOP_RESEND_AFTER = timedelta(minutes=2)
STOP_RESENT_KEY = "sagemaker:stop-resent:{}"
STOP_RESENT_LINE = "SageMaker was still running the job after it was stopped; asked it again to stop"


def poll_jobs(
    *,
    now: datetime | None = None,
    budget: PollBudget | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PollReport:
    """One poll cycle over every SageMaker job that is still running in AWS. One at a time."""
    if not is_configured():
        return PollReport(skipped="SageMaker is not configured")
    token = uuid.uuid4().hex
    if not cache.add(LOCK_KEY, token, LOCK_SECONDS):
        return PollReport(skipped="another poll is running")
    try:
        return _Poller(now or timezone.now(), budget or PollBudget(), sleep, clock).run()
    finally:
        if cache.get(LOCK_KEY) == token:
            cache.delete(LOCK_KEY)


POLL_FIELDS = (
    "id",
    "owner_id",
    "status",
    "instance_type",
    "instance_count",
    "use_spot",
    "max_cost_usd",
    "cost_usd",
    "sagemaker_job_name",
    "sagemaker_status",
    "sagemaker_secondary_status",
    "sagemaker_log_state",
    "sagemaker_last_modified",
    "sagemaker_described_at",
    "training_started_at",
    "started_at",
    "stop_requested_at",
)


class _Poller:
    def __init__(
        self, now: datetime, budget: PollBudget, sleep: Callable[[float], None], clock: Callable[[], float]
    ) -> None:
        self.now = now
        self.report = PollReport()
        self.call = PollCalls(budget, self.report, sleep, clock)
        self._list_complete = False
        self._since: datetime | None = None

    def run(self) -> PollReport:
        jobs = list(
            TrainingJob.objects.filter(backend=Backend.SAGEMAKER)
            .exclude(sagemaker_job_name="")
            .filter(
                Q(sagemaker_status__in=AWS_ACTIVE)
                | Q(sagemaker_status__in=AWS_FINAL, sagemaker_log_state__drained=False)
            )
            .select_related("instance_type")
            .only(*POLL_FIELDS, "instance_type__name", "instance_type__price_per_hour_usd")
            .order_by("pk")
        )
        orphans = list(
            TrainingJob.objects.filter(
                backend=Backend.SAGEMAKER,
                sagemaker_status="",
                status__in=(S.PREPARING, S.STOPPING),
                started_at__lt=self.now - ORPHAN_AFTER,
            )
            .only("id", "status", "sagemaker_job_name", "owner_id", "attempt")
            .order_by("pk")
        )
        self.report.jobs = len(jobs)
        if not jobs and not orphans:
            return self.report
        running = [job for job in jobs if job.sagemaker_status in AWS_ACTIVE]
        with contextlib.suppress(Throttled, OutOfBudget):
            self._describe_changed(running)
        with contextlib.suppress(Throttled, OutOfBudget):
            self._resend_lost_stops(running)
        LogReader(self.call, self.now).read(jobs)
        self._update_running_costs(running)
        with contextlib.suppress(Throttled, OutOfBudget):
            self._settle_orphans(orphans)
        self.call.forget_old_throttling()
        return self.report

    def _describe_changed(self, jobs: list[TrainingJob]) -> None:
        if not jobs:
            return
        never = [job for job in jobs if job.sagemaker_described_at is None]
        # Jobs never described are described anyway: list only when some job has been.
        changed = self._list_changes(jobs) if len(never) < len(jobs) else {}
        moved = [
            job
            for job in jobs
            if job.sagemaker_described_at is not None
            and job.sagemaker_job_name in changed
            and (
                job.sagemaker_last_modified is None
                or changed[job.sagemaker_job_name]["LastModifiedTime"] > job.sagemaker_last_modified
            )
        ]
        moved.sort(key=lambda job: changed[job.sagemaker_job_name].get("TrainingJobStatus") not in AWS_FINAL)
        moved_ids = {job.pk for job in moved}
        stale = sorted(
            (
                job
                for job in jobs
                if job.sagemaker_described_at is not None
                and job.pk not in moved_ids
                and job.sagemaker_described_at
                < self.now - (STOPPING_DESCRIBE_AFTER if job.status == S.STOPPING else STALE_DESCRIBE_AFTER)
            ),
            key=lambda job: job.sagemaker_described_at,
        )
        queue = never + moved + stale
        done = 0
        try:
            for job in queue:
                described = self.call(
                    "describe", "DescribeTrainingJob", TrainingJobName=job.sagemaker_job_name
                )
                self.report.described += 1
                apply_description(job, described, self.now)
                done += 1
        finally:
            # Jobs listed as changed but not described this cycle must be listed again next cycle.
            deferred = [
                changed[j.sagemaker_job_name]["LastModifiedTime"] for j in queue[done:] if j.pk in moved_ids
            ]
            self._advance_watermark(deferred)

    def _list_changes(self, jobs: list[TrainingJob]) -> dict[str, dict]:
        self._list_complete = False
        since = self._since = self._watermark(jobs)
        if since is None:
            return {}
        names = {job.sagemaker_job_name for job in jobs}
        changed: dict[str, dict] = {}
        params = {
            "LastModifiedTimeAfter": since,
            "NameContains": JOB_NAME_PREFIX,
            "MaxResults": 100,
            "SortBy": "CreationTime",
            "SortOrder": "Descending",
        }
        try:
            while True:
                page = self.call("list", "ListTrainingJobs", **params)
                for summary in page.get("TrainingJobSummaries", []):
                    if summary["TrainingJobName"] in names:
                        changed[summary["TrainingJobName"]] = summary
                if not page.get("NextToken"):
                    self._list_complete = True
                    break
                params["NextToken"] = page["NextToken"]
        except (Throttled, OutOfBudget):
            pass  # describe what was found; the watermark stays
        return changed

    def _watermark(self, jobs: list[TrainingJob]) -> datetime | None:
        stored = cache.get(WATERMARK_KEY)
        if stored:
            return datetime.fromisoformat(stored)
        known = [job.sagemaker_last_modified for job in jobs if job.sagemaker_last_modified]
        # Without a watermark (first poll, or a cleared cache) start from the oldest job we know.
        return min(known) - WATERMARK_OVERLAP if known else None

    def _advance_watermark(self, deferred: list[datetime]) -> None:
        """Next cycle lists what changed since a little before this one began (clock skew, lag)."""
        if not self._list_complete and self._since is not None:
            cache.set(WATERMARK_KEY, self._since.isoformat(), None)  # it stopped early: same point again
            return
        mark = self.now - WATERMARK_OVERLAP
        if deferred:
            mark = min(mark, min(deferred) - timedelta(seconds=1))
        cache.set(WATERMARK_KEY, mark.isoformat(), None)

    def _resend_lost_stops(self, jobs: list[TrainingJob]) -> None:
        """Send StopTrainingJob again for a stop AWS never saw (see STOP_RESEND_AFTER)."""
        for job in jobs:
            if not self._stop_was_lost(job):
                continue
            try:
                self.call("stop", "StopTrainingJob", TrainingJobName=job.sagemaker_job_name)
            except ClientError as error:
                if error_code(error) in TRANSIENT_CODES:
                    logger.warning("job %s: StopTrainingJob failed again: %s", job.pk, error)
                    continue  # the next cycle tries again
                stop_refused(job, error)
            else:
                logger.warning("job %s: SageMaker still says InProgress; sent StopTrainingJob again", job.pk)
                lifecycle.append_log(job.pk, [STOP_RESENT_LINE])
            cache.set(STOP_RESENT_KEY.format(job.pk), self.now.isoformat(), 3600)

    def _stop_was_lost(self, job: TrainingJob) -> bool:
        """Stopping here, while AWS, described since the stop was asked for, still says InProgress."""
        asked = job.stop_requested_at
        if job.status != S.STOPPING or job.sagemaker_status != "InProgress" or asked is None:
            return False
        since = self.now - STOP_RESEND_AFTER
        if asked > since or job.sagemaker_described_at is None or job.sagemaker_described_at <= asked:
            return False
        resent = cache.get(STOP_RESENT_KEY.format(job.pk))
        return resent is None or datetime.fromisoformat(resent) <= since

    def _update_running_costs(self, jobs: list[TrainingJob]) -> None:
        changed = []
        for job in jobs:
            if job.instance_type is None or job.training_started_at is None:
                continue
            if job.sagemaker_status not in AWS_ACTIVE:
                continue
            cost = pricing.running_cost(
                job.instance_type, job.instance_count, job.training_started_at, self.now
            )
            if cost != job.cost_usd:
                job.cost_usd = cost
                changed.append(job)
        TrainingJob.objects.bulk_update(changed, ["cost_usd"], batch_size=500)

    def _settle_orphans(self, orphans: list[TrainingJob]) -> None:
        for job in orphans:
            name = job.sagemaker_job_name or job_name(job)
            try:
                described = self.call("describe", "DescribeTrainingJob", TrainingJobName=name)
            except ClientError as error:
                if not is_not_found(error):
                    raise
                if job.status == S.STOPPING:
                    lifecycle.transition(job.pk, S.STOPPED, "Stopped before it started on SageMaker")
                else:
                    lifecycle.transition(
                        job.pk,
                        S.FAILED,
                        "The submission to SageMaker did not finish (its worker stopped); "
                        "nothing is running. Retry the job.",
                    )
                continue
            TrainingJob.objects.filter(pk=job.pk).update(
                sagemaker_job_name=name, sagemaker_status="InProgress"
            )
            job = TrainingJob.objects.select_related("instance_type").get(pk=job.pk)
            apply_description(job, described, self.now)
