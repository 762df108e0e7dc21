"""Where a job runs. `queue_job` hands a saved job to its backend's task after commit."""

from __future__ import annotations

import uuid

from django.db import transaction

from jobs.models import Backend, TrainingJob


def queue_job(job: TrainingJob) -> None:
    from jobs import tasks

    runners = {Backend.LOCAL: tasks.run_local_job, Backend.SAGEMAKER: tasks.submit_sagemaker_job}
    task = runners.get(job.backend)
    if task is None:
        raise ValueError(f"no backend can run {job.backend!r} jobs")
    task_id = str(uuid.uuid4())
    TrainingJob.objects.filter(pk=job.pk).update(celery_task_id=task_id)
    job.celery_task_id = task_id
    transaction.on_commit(lambda: task.apply_async((job.pk,), task_id=task_id))
