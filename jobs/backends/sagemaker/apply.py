"""Applying what AWS says: a DescribeTrainingJob moves the job along, and prices it as it runs and
once it ends (billable seconds × the instance price); a job that ended is finished once its logs are read."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from jobs import lifecycle, pricing
from jobs.backends.sagemaker.config import AWS_FINAL
from jobs.models import JobStatus, TrainingJob

S = JobStatus


SECONDARY_MESSAGES = {
    "Starting": "Starting the training job",
    "Pending": "Waiting for compute capacity",
    "LaunchingMLInstances": "Launching the instances",
    "PreparingTrainingStack": "Preparing the training stack",
    "Downloading": "Downloading the training data",
    "DownloadingTrainingImage": "Downloading the training image",
    "Training": "Training",
    "Interrupted": "The spot instance was interrupted; SageMaker resumes when capacity returns",
    "Restarting": "Restarting after an interruption",
    "Updating": "Updating the training job",
    "Uploading": "Uploading the model to S3",
    "Stopping": "Stopping on SageMaker",
}


def apply_description(job: TrainingJob, described: dict, now: datetime) -> None:
    """Store what DescribeTrainingJob says and move the job along (final states wait for its logs)."""
    status = described.get("TrainingJobStatus", "")
    secondary = described.get("SecondaryStatus", "")
    updates: dict[str, Any] = {
        "sagemaker_status": status,
        "sagemaker_secondary_status": secondary,
        "sagemaker_last_modified": described.get("LastModifiedTime"),
        "sagemaker_described_at": now,
    }
    started = described.get("TrainingStartTime")
    if started:
        updates["training_started_at"] = started
    artifacts = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts:
        updates["model_artifacts_uri"] = artifacts
    instance_type = job.instance_type
    if status in AWS_FINAL:
        billable = described.get("BillableTimeInSeconds")
        training = described.get("TrainingTimeInSeconds")
        if billable is None and started and described.get("TrainingEndTime"):
            billable = int((described["TrainingEndTime"] - started).total_seconds())
        updates["billable_seconds"] = billable
        updates["training_seconds"] = training if training is not None else billable
        if instance_type is not None:
            updates["cost_usd"] = pricing.cost_for_seconds(billable or 0, instance_type, job.instance_count)
        state = dict(job.sagemaker_log_state or {})
        state.update(drained=False, failure_reason=described.get("FailureReason", ""))
        state["max_runtime"] = (described.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        updates["sagemaker_log_state"] = state
    elif started and instance_type is not None:
        updates["cost_usd"] = pricing.running_cost(instance_type, job.instance_count, started, now)
    TrainingJob.objects.filter(pk=job.pk).update(**updates)
    for name, value in updates.items():
        setattr(job, name, value)
    if status == "InProgress":
        _apply_progress(job, secondary, described)
    elif status == "Stopping":
        lifecycle.transition(job.pk, S.STOPPING, SECONDARY_MESSAGES["Stopping"])


def _apply_progress(job: TrainingJob, secondary: str, described: dict) -> None:
    message = SECONDARY_MESSAGES.get(secondary, secondary)
    if secondary == "Training":
        message = (
            f"Training on {job.instance_count} × {job.instance_type}"
            if job.instance_count > 1
            else (f"Training on {job.instance_type}")
        )
    detail = _latest_transition_message(described)
    if detail and secondary in ("Pending", "Starting", "Interrupted", "Restarting", "Downloading"):
        message = f"{message}: {detail}"
    if secondary == "Training":
        # The container runs: the script's own phase events (read from its log) follow.
        lifecycle.enter_phase(job.pk, "preparing_data", only_from=("starting",))
    if secondary in ("Training", "Interrupted", "Restarting"):
        if lifecycle.transition(job.pk, S.TRAINING, message):
            return
    elif secondary == "Uploading" and lifecycle.transition(job.pk, S.UPLOADING, message):
        return
    # No move (already there, or a sub-step): keep the message current, without touching the state.
    TrainingJob.objects.filter(pk=job.pk, status__in=(S.PREPARING, S.TRAINING, S.UPLOADING)).exclude(
        status_message=message
    ).update(status_message=message[:1000])


def _latest_transition_message(described: dict) -> str:
    transitions = described.get("SecondaryStatusTransitions") or []
    return str(transitions[-1].get("StatusMessage", "")).strip() if transitions else ""


def finish(job: TrainingJob, *, complete_logs: bool) -> None:
    """Move a job that ended in AWS to its final state, once its logs are read."""
    state = dict(job.sagemaker_log_state or {})
    state["drained"] = True
    TrainingJob.objects.filter(pk=job.pk).update(sagemaker_log_state=state)
    job.refresh_from_db(
        fields=["cost_usd", "billable_seconds", "training_seconds", "use_spot", "max_cost_usd", "metrics"]
    )
    if not complete_logs:
        lifecycle.append_log(job.pk, ["(The end of the log could not be read from CloudWatch in time.)"])
    status, secondary = job.sagemaker_status, job.sagemaker_secondary_status
    if status == "Completed":
        message = f"Completed on SageMaker: {_billing_summary(job)}"
        lifecycle.append_log(job.pk, [message])
        lifecycle.transition(job.pk, S.COMPLETED, message)
    elif status == "Failed":
        reason = state.get("failure_reason") or "no reason given"
        message = f"SageMaker: {reason}"
        lifecycle.append_log(job.pk, [message])
        lifecycle.transition(job.pk, S.FAILED, message)
    elif status == "Stopped":
        if secondary == "MaxRuntimeExceeded":
            limit = state.get("max_runtime")
            cap = f"${job.max_cost_usd:.2f} cost cap" if job.max_cost_usd is not None else "monthly budget"
            message = (
                f"Stopped by AWS when the job reached its {cap}"
                + (f" ({_duration(limit)} of run time)" if limit else "")
                + f"; {_billing_summary(job)}. Clone it with a higher cap to train longer."
            )
        elif secondary == "MaxWaitTimeExceeded":
            message = (
                "Stopped by AWS: no spot capacity came within the maximum wait time. "
                "Clone the job without spot, or try again later."
            )
        else:
            message = f"Stopped; {_billing_summary(job)}"
        if (job.metrics or {}).get("model_saved"):  # the script's `stopped` event, read from its log
            message = message.rstrip(".") + ". The model so far is saved."
        lifecycle.append_log(job.pk, [message])
        lifecycle.transition(job.pk, S.STOPPED, message)


def _billing_summary(job: TrainingJob) -> str:
    text = f"{job.billable_seconds or 0} billable seconds, ${Decimal(job.cost_usd):.2f}"
    savings = job.spot_savings_usd
    if savings:
        text += f" (spot saved ${savings:.2f})"
    return text


def _duration(seconds: int | None) -> str:
    seconds = int(seconds or 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"
