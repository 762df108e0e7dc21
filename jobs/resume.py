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

from django import forms
from django.db.models import F
from django.db.models.functions import Greatest

from jobs import artifacts, checkpoints
from jobs.models import FINAL_STATES, Backend, InstanceType, JobStatus, Method, MetricPoint, TrainingJob
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


def resume_job(
    job: TrainingJob, backend: str | None = None, instance_type: InstanceType | None = None
) -> tuple[TrainingJob, bool]:
    """The next attempt of `job`, from its last checkpoint: (it, whether this call made it).

    On its own backend, or on `backend` (with `instance_type` for SageMaker): the checkpoint is
    in the same place for both. Refused (ResumeRefused) for a job without a checkpoint: Retry
    starts that one over.
    """
    from jobs import actions

    attempt = actions.next_attempt(job)
    if attempt is not None:
        return attempt, False
    if job.status in RESUMABLE_STATES and resume_step(job) is None:
        raise ResumeRefused(no_checkpoint_reason(job))
    moved = where_to_resume(job, backend, instance_type) if backend else {}
    try:
        return actions.retry_job(job, **moved)
    except actions.ActionError as error:
        raise ResumeRefused(str(error)) from None


def where_to_resume(job: TrainingJob, backend: str, instance_type: InstanceType | None) -> dict[str, Any]:
    """The fields of an attempt that runs on `backend` instead, with its estimate; refused when
    SageMaker lacks an instance type or the estimate exceeds what is left of the month's budget."""
    from jobs import pricing
    from jobs.forms import estimate_for

    if backend == Backend.LOCAL:
        moved = {"backend": backend, "instance_type": None, "use_spot": False, "max_cost_usd": None}
    elif instance_type is None:
        raise ResumeRefused("Choose an instance type to resume it on SageMaker.")
    else:
        moved = {"backend": backend, "instance_type": instance_type, "instance_count": 1}
    if job.dataset is None:
        raise ResumeRefused("Its dataset was deleted: clone it and choose another dataset.")
    # The whole job's estimate: the steps left take less, so this errs on the safe side.
    estimate = estimate_for(job.dataset, job.base_model, job.hyperparameters, backend, moved["instance_type"])
    if backend == Backend.SAGEMAKER and estimate.cost_usd is not None:
        refusal = pricing.check_budget(job.owner, estimate.cost_usd)
        if refusal:
            raise ResumeRefused(refusal)
    return {**moved, "estimated_seconds": estimate.seconds, "estimated_cost_usd": estimate.cost_usd}


class ResumeForm(forms.Form):
    """Where to resume: this machine, or SageMaker on an instance type."""

    backend = forms.ChoiceField(choices=Backend.choices)
    instance_type = forms.ModelChoiceField(
        queryset=InstanceType.objects.filter(is_active=True), required=False
    )

    def clean(self) -> dict[str, Any]:
        from jobs.forms import sagemaker_availability

        data = super().clean()
        if data.get("backend") == Backend.SAGEMAKER:
            available, reason = sagemaker_availability()
            if not available:
                self.add_error("backend", f"SageMaker is {reason}.")
            elif not data.get("instance_type"):
                self.add_error("instance_type", "Choose an instance type to resume it on SageMaker.")
        return data


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


def initial_for_continuing(source: TrainingJob, user) -> dict[str, Any]:
    """The new-job form's values for a job continuing `source`: its settings, like a clone's."""
    from jobs.forms import initial_from_job

    return {**initial_from_job(source, user), "name": f"{source.name} (continued)"[:200]}


# --- What the job page says ------------------------------------------------------------------


def page_notes(job: TrainingJob) -> dict[str, Any]:
    """What the job page's resume section says about this job (one storage listing for a job that
    can be resumed)."""
    from jobs import actions

    notes: dict[str, Any] = {
        "resumed_at_step": job.resumed_at_step if job.retry_of_id or job.resumed_at_step else None,
        "continued_from": job.continued_from,
        "next_attempt": None,
        "resume_step": None,
        "no_checkpoint_reason": "",
        "can_continue": job.status == JobStatus.COMPLETED,
    }
    if job.status in RESUMABLE_STATES:
        notes["next_attempt"] = actions.next_attempt(job)
        if notes["next_attempt"] is None:
            # What storage holds, which Resume uses (the row's figure is what the script last said;
            # a SageMaker log line the poller skipped would leave it behind). The card shows it too.
            job.checkpoint_step = resume_step(job)
        if job.checkpoint_step:
            notes["resume_step"] = job.checkpoint_step
            notes["resume_form"] = ResumeForm(
                initial={"backend": job.backend, "instance_type": job.instance_type_id}
            )
        else:
            notes["no_checkpoint_reason"] = no_checkpoint_reason(job)
    notes["any"] = any(
        notes[name]
        for name in (
            "resumed_at_step",
            "continued_from",
            "next_attempt",
            "resume_step",
            "no_checkpoint_reason",
            "can_continue",
        )
    )
    return notes
