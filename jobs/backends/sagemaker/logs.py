"""Log tailing: each job's CloudWatch log streams, read on from their stored forward tokens and fed,
line by line, to the same lifecycle functions the local backend uses."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from botocore.exceptions import ClientError

from jobs import lifecycle
from jobs.backends.sagemaker.apply import finish
from jobs.backends.sagemaker.budget import OutOfBudget, PollCalls, Throttled
from jobs.backends.sagemaker.config import AWS_ACTIVE, AWS_FINAL
from jobs.backends.sagemaker.errors import is_not_found
from jobs.models import TrainingJob
from training_scripts import progress

logger = logging.getLogger(__name__)

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# Secondary statuses in which the training container may be writing logs.
LOGGING_SECONDARY = frozenset(
    {"Training", "Uploading", "Stopping", "Interrupted", "Restarting", "Updating", "MaxRuntimeExceeded"}
)
# Log streams are looked for again this often (spot restarts and extra instances add streams).
STREAM_DISCOVERY_EVERY = timedelta(minutes=5)
# A finished job whose logs could not be read to the end is finished anyway after this long.
DRAIN_DEADLINE = timedelta(minutes=10)
LOG_PAGES_PER_STREAM = 5
LOG_PAGE_LIMIT = 1000


class LogReader:
    """One poll cycle's log reads: finished jobs are drained first, then the running ones are tailed."""

    def __init__(self, calls: PollCalls, now: datetime) -> None:
        self.calls = calls
        self.now = now
        self.report = calls.report

    def read(self, jobs: list[TrainingJob]) -> None:
        draining = sorted(
            (job for job in jobs if job.sagemaker_status in AWS_FINAL),
            key=lambda job: job.sagemaker_described_at or self.now,
        )
        running = sorted(
            (
                job
                for job in jobs
                if job.sagemaker_status in AWS_ACTIVE and job.sagemaker_secondary_status in LOGGING_SECONDARY
            ),
            key=lambda job: (job.sagemaker_log_state or {}).get("tailed_at", ""),
        )
        for job in draining:
            drained = False
            with contextlib.suppress(Throttled, OutOfBudget):
                drained = self._tail(job, drain=True)
            overdue = job.sagemaker_described_at and job.sagemaker_described_at < self.now - DRAIN_DEADLINE
            if drained or overdue:
                finish(job, complete_logs=drained)
                self.report.finished += 1
        for job in running:
            try:
                self._tail(job, drain=False)
            except (Throttled, OutOfBudget):
                break

    def _tail(self, job: TrainingJob, *, drain: bool) -> bool:
        """Read the job's log streams on from their tokens. True once every stream is read to its end."""
        state = dict(job.sagemaker_log_state or {})
        streams: dict[str, str] = dict(state.get("streams") or {})
        discovered = state.get("discovered_at")
        # One instance, no spot restarts: its one stream is all there is, even at the end.
        may_add_streams = job.use_spot or job.instance_count > 1
        want_discovery = (
            not streams
            or (drain and may_add_streams and not state.get("final_discovery"))
            or (
                (job.use_spot or len(streams) < job.instance_count)
                and (not discovered or datetime.fromisoformat(discovered) < self.now - STREAM_DISCOVERY_EVERY)
            )
        )
        complete = True
        try:
            if want_discovery:
                try:
                    found = self.calls(
                        "logs",
                        "DescribeLogStreams",
                        logGroupName=LOG_GROUP,
                        logStreamNamePrefix=f"{job.sagemaker_job_name}/",
                    )
                except ClientError as error:
                    if not is_not_found(error):
                        raise
                    found = {"logStreams": []}
                for stream in found.get("logStreams", []):
                    streams.setdefault(stream["logStreamName"], "")
                state["discovered_at"] = self.now.isoformat()
                if drain:
                    state["final_discovery"] = True
            for stream in sorted(streams):
                pages = 0
                while True:
                    if pages >= (LOG_PAGES_PER_STREAM * (4 if drain else 1)):
                        complete = False
                        break
                    token = streams[stream]
                    params = {
                        "logGroupName": LOG_GROUP,
                        "logStreamName": stream,
                        "startFromHead": True,
                        "limit": LOG_PAGE_LIMIT,
                    }
                    if token:
                        params["nextToken"] = token
                    page = self.calls("logs", "GetLogEvents", **params)
                    pages += 1
                    events = page.get("events", [])
                    self._feed(job, events)
                    streams[stream] = page.get("nextForwardToken") or token
                    if not events or streams[stream] == token:
                        break
                    if not drain and len(events) < LOG_PAGE_LIMIT:
                        break  # most likely caught up; the next cycle goes on from the token anyway
        except (Throttled, OutOfBudget):
            complete = False
            raise
        except ClientError as error:
            complete = False
            logger.warning("job %s: could not read its logs: %s", job.pk, error)
        finally:
            state["streams"] = streams
            state["tailed_at"] = self.now.isoformat()
            TrainingJob.objects.filter(pk=job.pk).update(sagemaker_log_state=state)
            job.sagemaker_log_state = state
            self.report.tailed += 1
        return complete

    def _feed(self, job: TrainingJob, events: list[dict]) -> None:
        lines = []
        for log_event in events:
            for line in str(log_event.get("message", "")).splitlines():
                event = progress.parse_event(line)
                if event is None:
                    lines.append(line)
                    continue
                lifecycle.record_event(job.pk, event)
                lines.append(lifecycle.describe_event(event))
        lifecycle.append_log(job.pk, lines)
