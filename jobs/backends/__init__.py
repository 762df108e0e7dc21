"""Where a job runs. `queue_job` hands a saved job to its backend's task after commit;
`resend_lost_jobs` sends again the queued jobs whose message the broker lost."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import Backend, JobStatus, TrainingJob
from llmtuner import broker

logger = logging.getLogger(__name__)


def queue_job(job: TrainingJob) -> None:
    from jobs import tasks

    runners = {Backend.LOCAL: tasks.run_local_job, Backend.SAGEMAKER: tasks.submit_sagemaker_job}
    task = runners.get(job.backend)
    if task is None:
        raise ValueError(f"no backend can run {job.backend!r} jobs")
    task_id = str(uuid.uuid4())
    TrainingJob.objects.filter(pk=job.pk).update(celery_task_id=task_id)
    job.celery_task_id = task_id
    # A broker that is down does not undo the job: it stays queued and is sent again later.
    broker.send_on_commit(task, (job.pk,), task_id)


def resend_lost_jobs(now: datetime | None = None) -> list[int]:
    """Send again every job queued for a while whose task the broker no longer holds.

    A task is lost when Redis restarts without persistence, or when it could not be sent
    because the broker was down. A repeated task is harmless: each backend claims its job with
    a conditional update, so whichever copy comes first runs it and the others do nothing.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.QUEUED_JOB_RESEND_SECONDS)
    waiting = list(
        TrainingJob.objects.filter(status=JobStatus.QUEUED, created_at__lt=cutoff).values_list(
            "pk", "celery_task_id"
        )
    )
    if not waiting:
        return []
    held = broker.messages_in_broker()
    if held is None:
        return []  # the broker cannot be read (or is down): nothing can be told lost
    from jobs import lifecycle

    resent = []
    for job_id, task_id in waiting:
        if task_id and task_id in held:
            continue
        with transaction.atomic():
            job = TrainingJob.objects.select_for_update().filter(pk=job_id, status=JobStatus.QUEUED).first()
            if job is None:
                continue
            queue_job(job)
        lifecycle.append_log(
            job_id, ["No worker had received this job (the broker lost it); it was sent again."]
        )
        logger.warning(
            "job %s was queued but not in the broker; sent again as %s", job_id, job.celery_task_id
        )
        resent.append(job_id)
    return resent
