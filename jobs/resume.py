"""Resume and Continue: a job's next attempt from its last checkpoint, and a new job from a tuned model.

Resume is Retry of a job that left a checkpoint: `actions.retry_job` makes the next attempt
(one per attempt, however many clicks), and the fields below make it share the chain's
checkpoint folder, so the training script continues from the newest checkpoint there by itself
(contract C2). Without a checkpoint, Retry starts over. Continue makes a new job whose training
starts from a completed job's tuned model instead of the base model's weights (contract C3).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import F
from django.db.models.functions import Greatest

from jobs import artifacts, checkpoints
from jobs.models import FINAL_STATES, JobStatus, Method, MetricPoint, TrainingJob
from llmtuner import storage
from training_scripts.hyperparameters import DEFAULTS

logger = logging.getLogger(__name__)
RESUMABLE_STATES = frozenset({JobStatus.FAILED, JobStatus.STOPPED})


class ResumeRefused(Exception):
    """Resume or Continue refused, with a message for the job's owner."""


# --- Resume ----------------------------------------------------------------------------------


def resume_step(job: TrainingJob) -> int | None:
    """The step a retry of `job` starts from: its chain's newest complete checkpoint (None: step 0)."""
    if job.status not in RESUMABLE_STATES:
        return None
    try:
        return checkpoints.latest_step(job)
    except storage.STORAGE_ERRORS as error:
        logger.warning("job %s: could not list its checkpoints: %s", job.pk, error)
        return None


def next_attempt_fields(job: TrainingJob) -> dict[str, Any]:
    """What the next attempt of `job` carries beside its settings: the chain's checkpoints, the step it
    resumes from (None: it starts over), and the tuned model the chain continued from, if any."""
    step = resume_step(job)
    return {
        "checkpoint_prefix": checkpoints.prefix(job),
        "resumed_at_step": step,
        "checkpoint_step": step,
        "continued_from": job.continued_from,
    }


def resume_job(job: TrainingJob) -> tuple[TrainingJob, bool]:
    """The next attempt of `job`, from its last checkpoint: (it, whether this call made it).

    Refused (ResumeRefused) for a job without a checkpoint: Retry starts that one over.
    """
    from jobs import actions

    attempt = actions.next_attempt(job)
    if attempt is not None:
        return attempt, False
    if job.status in RESUMABLE_STATES and resume_step(job) is None:
        raise ResumeRefused(no_checkpoint_reason(job))
    try:
        return actions.retry_job(job)
    except actions.ActionError as error:
        raise ResumeRefused(str(error)) from None


def no_checkpoint_reason(job: TrainingJob) -> str:
    hyperparameters = job.hyperparameters or {}
    if not hyperparameters.get("save_steps") and not hyperparameters.get("checkpoint_minutes"):
        why = "it was set to save none (save_steps is 0)"
    elif job.step == 0:
        why = "it ended before its first training step"
    else:
        why = "it ended before its first checkpoint"
    return f"“{job.name}” has no checkpoint to resume from: {why}. Retry starts it over from step 0."


def record_resumed(job_id: int, step: int | None) -> None:
    """The script said it resumed at `step` (the start event's `resumed_from_step`).

    The attempt's progress starts there, and its chart gets the earlier attempt's points up to
    that step, so the page shows one curve.
    """
    if not step:
        TrainingJob.objects.filter(pk=job_id).update(resumed_at_step=None)
        return
    TrainingJob.objects.filter(pk=job_id).update(resumed_at_step=step, step=Greatest(F("step"), step))
    earlier = TrainingJob.objects.filter(pk=job_id).values_list("retry_of_id", flat=True).first()
    if earlier is None or MetricPoint.objects.filter(job_id=job_id, step__lte=step).exists():
        return  # a first attempt, or a container restart within this attempt: its points are here
    points = MetricPoint.objects.filter(job_id=earlier, step__lte=step).order_by("id")
    MetricPoint.objects.bulk_create(
        MetricPoint(
            job_id=job_id,
            step=point.step,
            epoch=point.epoch,
            loss=point.loss,
            eval_loss=point.eval_loss,
            learning_rate=point.learning_rate,
        )
        for point in points
    )


def record_checkpoint(job_id: int, step: int | None) -> None:
    """The script wrote a checkpoint (the local backend stores it, SageMaker syncs it): the job
    page offers to resume from it. Resuming itself trusts only what storage holds."""
    if step:
        TrainingJob.objects.filter(pk=job_id).exclude(status__in=FINAL_STATES).update(checkpoint_step=step)


# --- Continue --------------------------------------------------------------------------------


def continue_problem(job: TrainingJob) -> str:
    """Why `job` cannot be continued ("" when it can): it must have completed with a stored model."""
    if job.status != JobStatus.COMPLETED:
        return f"Only a completed job can be continued; this one is {job.get_status_display().lower()}." + (
            " Resume it instead." if job.status in RESUMABLE_STATES else ""
        )
    try:
        artifacts.locate(job)
    except artifacts.ModelArtifactsError as error:
        return str(error)
    return ""


def saved_an_adapter(job: TrainingJob) -> bool:
    """A LoRA job saves only its adapter unless it merged it into the model."""
    merged = (job.hyperparameters or {}).get("merge_adapter", DEFAULTS["merge_adapter"])
    return job.method == Method.LORA and not merged


def continuation_problem(source: TrainingJob, base_model, method: str) -> str:
    """Why a new job with this base model and method cannot start from `source`'s model ("" if it can)."""
    if base_model is not None and base_model.pk != source.base_model_id:
        return (
            f"A continued job trains the same base model as “{source.name}” "
            f"({source.base_model.name}): its tuned weights fit no other."
        )
    if saved_an_adapter(source) and method != Method.LORA:
        return (
            f"“{source.name}” saved a LoRA adapter, which trains on as LoRA only: choose the LoRA method "
            "(or continue a job that merged its adapter)."
        )
    return ""
