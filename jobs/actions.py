"""What the jobs pages do to jobs, beside the lifecycle: launch, retry, delete.

State changes of a running job stay in jobs.lifecycle; these functions make
new queued rows (and hand them to their backend after commit) and remove final
ones. A finished job's stored model is read through jobs.artifacts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.db import IntegrityError, transaction

from jobs import checkpoints, queueing, resume
from jobs.backends import queue_job
from jobs.estimate import Estimate
from jobs.models import FINAL_STATES, Backend, JobStatus, TrainingJob
from llmtuner import storage

logger = logging.getLogger(__name__)
RETRYABLE_STATES = frozenset({JobStatus.FAILED, JobStatus.STOPPED})


class ActionError(Exception):
    """A refused action, with a message for the job's owner."""


class LimitRefused(ActionError):
    """A local job past the runtime cap, or over its owner's cap on local jobs."""


def launch_job(owner, *, estimate: Estimate | None = None, **fields: Any) -> TrainingJob:
    """Save a job as queued and hand it to its backend once the row is committed."""
    if estimate is not None:
        fields.setdefault("estimated_seconds", estimate.seconds)
        fields.setdefault("estimated_cost_usd", estimate.cost_usd)
        fields.setdefault("estimated_slow_seconds", estimate.slow_seconds)
        fields.setdefault("estimate_basis", estimate.basis)
        fields.setdefault("estimated_phases", estimate.phases)
    with transaction.atomic():
        if fields.get("backend", Backend.LOCAL) == Backend.LOCAL:
            _check_local_limits(owner, fields.get("estimated_seconds"))
        job = TrainingJob.objects.create(owner=owner, status=JobStatus.QUEUED, **fields)
        queue_job(job)
    return job


def _check_local_limits(owner, estimated_seconds: int | None) -> None:
    # Every way in (the form, a clone, a retry, a manifest) ends here; the owner's row is locked
    # so two launches at once cannot both pass the cap.
    refusal = queueing.runtime_refusal(Backend.LOCAL, estimated_seconds)
    if refusal is None:
        queueing.lock_owner(owner)
        refusal = queueing.local_jobs_refusal(owner)
    if refusal:
        raise LimitRefused(refusal)


def launched_with(owner, submit_token: UUID | None) -> TrainingJob | None:
    """The job that the new-job form with this one-time token already made, if any."""
    if submit_token is None:
        return None
    return TrainingJob.objects.filter(owner=owner, submit_token=submit_token).first()


def launch_once(owner, submit_token: UUID | None, **fields: Any) -> tuple[TrainingJob, bool]:
    """launch_job for a new-job form: (the job, whether this call made it).

    A form without a token (a script's post) launches each time.
    """
    return _launch_unless(
        lambda: launched_with(owner, submit_token), owner, submit_token=submit_token, **fields
    )


def next_attempt(job: TrainingJob) -> TrainingJob | None:
    return TrainingJob.objects.filter(retry_of=job).first()


def retry_job(job: TrainingJob, **moved: Any) -> tuple[TrainingJob, bool]:
    """The next attempt of a failed or stopped job, with its settings: (it, whether this call made it).

    It resumes from the last checkpoint of the job's chain of attempts when there is one
    (jobs/resume.py), and starts over otherwise.

    An attempt is retried once: a second retry (a double click, two operators) gets the attempt
    the first one made. `moved` replaces where it runs (resume.where_to_resume: another backend).
    """
    retried = next_attempt(job)
    if retried is not None:
        return retried, False
    if job.status not in RETRYABLE_STATES:
        raise ActionError(
            f"Only a failed or stopped job can be retried; this one is {job.get_status_display()}."
        )
    dataset = job.dataset
    if dataset is None:
        raise ActionError("Its dataset was deleted: clone it and choose another dataset.")
    if not dataset.is_ready:
        raise ActionError(f"Its dataset “{dataset.name}” is not ready.")
    fields = {
        "name": job.name,
        "dataset": dataset,
        "base_model": job.base_model,
        "backend": job.backend,
        "method": job.method,
        "hyperparameters": dict(job.hyperparameters),
        "instance_type": job.instance_type,
        "instance_count": job.instance_count,
        "use_spot": job.use_spot,
        "max_cost_usd": job.max_cost_usd,
        "estimated_seconds": job.estimated_seconds,
        "estimated_cost_usd": job.estimated_cost_usd,
        "estimated_slow_seconds": job.estimated_slow_seconds,
        "estimate_basis": job.estimate_basis,
        "estimated_phases": job.estimated_phases,
        "attempt": job.attempt + 1,
        "retry_of": job,
    }
    # From the chain's last checkpoint when there is one: a retry that can resume, resumes.
    fields.update(resume.next_attempt_fields(job), **moved)
    return _launch_unless(lambda: next_attempt(job), job.owner, **fields)


def _launch_unless(made: Callable[[], TrainingJob | None], owner, **fields: Any) -> tuple[TrainingJob, bool]:
    """launch_job, unless the same request, sent twice at once, made the job a moment ago.

    Both requests looked for the other's job before inserting and found none; the unique
    constraint lets one insert, and the other answers with its job (and queues nothing).
    """
    try:
        return launch_job(owner, **fields), True
    except IntegrityError:
        job = made()
        if job is None:
            raise
        return job, False


def delete_job(job: TrainingJob) -> None:
    """Remove a final job with its stored model, outputs and log."""
    if job.status not in FINAL_STATES:
        raise ActionError("A job that is still running cannot be deleted: stop it first.")
    # The model, the outputs and the full log all live under the job's prefix.
    own = job.storage_prefix() + "/"
    # So do the checkpoints of its chain of attempts, when it is the first: kept while a later
    # attempt (which may be resumed) still uses them, and removed with the last that does.
    shared = checkpoints.prefix(job)
    still_used = TrainingJob.objects.filter(checkpoint_prefix=shared).exclude(pk=job.pk).exists()
    if still_used and shared.startswith(own):
        storage.delete([key for key in storage.list_keys(own) if not key.startswith(shared)])
    else:
        storage.delete_prefix(own)
    if not still_used and not shared.startswith(own):
        storage.delete_prefix(shared)
    # The row goes only if nobody restarted it meanwhile.
    TrainingJob.objects.filter(pk=job.pk, status__in=FINAL_STATES).delete()
