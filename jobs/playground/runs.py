"""Playground runs: prompts tried on a completed job, answered by its tuned model and by its base.

The web process only saves a `PlaygroundRun` and queues `run_playground` after commit. The
worker claims the run, gets the tuned model's folder and the loaded models from
`jobs.playground.cache`, and generates with `jobs.playground.generation` - the only module
here that imports torch, imported inside `run_generation` so the web process never loads it.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from jobs import artifacts
from jobs.models import PlaygroundRun, PlaygroundStatus, TrainingJob
from jobs.playground.cache import MODEL_CACHE, model_folder
from llmtuner import broker

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 2.0
UNTRAINED_SEED = 0
MAX_ERROR_CHARS = 2000
# A queued run nobody picked up, or a running one whose worker died, is failed after this.
QUEUED_TIMEOUT = timedelta(hours=2)
RUNNING_GRACE = timedelta(seconds=120)
# PLAYGROUND_PROMPTS_PER_MINUTE counts the prompts a user sent in this window.
PROMPTS_WINDOW = timedelta(minutes=1)


class PlaygroundUnavailable(Exception):
    """The job has no tuned model to try (yet)."""


class TooManyPrompts(Exception):
    """The owner is at a per-user limit; `retry_after` is in seconds, None when it depends on a run ending."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- Availability and submission (web process) --------------------------------------


def unavailable_reason(job: TrainingJob) -> str | None:
    """Why this job has no playground, or None when it has one."""
    if not artifacts.has_model(job):
        return (
            f"This job is {job.get_status_display().lower()}: the playground opens once it has "
            "completed (or stopped after its first step) and its tuned model is saved."
        )
    try:
        artifacts.locate(job)
    except artifacts.ModelArtifactsError as error:
        return str(error)
    return None


def base_model_id(job: TrainingJob) -> str:
    # The catalogue's id (what the launch form passed to finetune.py), never a value a
    # person typed: the worker loads whatever this names.
    return job.base_model.hub_id


def is_scratch(job: TrainingJob) -> bool:
    return base_model_id(job).startswith("scratch:")


def base_label(job: TrainingJob) -> str:
    if is_scratch(job):
        return f"Untrained baseline (same architecture, random weights, seed {UNTRAINED_SEED})"
    return f"Base model ({base_model_id(job)})"


def is_chat(job: TrainingJob) -> bool:
    dataset = job.dataset
    return bool(dataset and (dataset.stats or {}).get("shape") == "messages")


def check_prompt_limits(owner_id: int) -> None:
    """Raise TooManyPrompts when this user may not send a prompt now.

    Counted from the user's runs, not a cache: exact, and a cache flush lifts no limit.
    """
    owned = PlaygroundRun.objects.filter(job__owner_id=owner_id)
    in_flight = owned.filter(status__in=(PlaygroundStatus.QUEUED, PlaygroundStatus.RUNNING)).count()
    if in_flight >= settings.PLAYGROUND_RUNS_IN_FLIGHT:
        raise TooManyPrompts(
            f"You have {_prompts(in_flight)} waiting or generating, the most at once: "
            "send this one when one of them has finished."
        )
    per_minute = settings.PLAYGROUND_PROMPTS_PER_MINUTE
    now = timezone.now()
    recent = list(
        owned.filter(created_at__gt=now - PROMPTS_WINDOW)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:per_minute]
    )
    if len(recent) >= per_minute:
        # Once the oldest of these leaves the window, one more prompt fits.
        wait = max(math.ceil((recent[-1] + PROMPTS_WINDOW - now).total_seconds()), 1)
        raise TooManyPrompts(
            f"You have sent {_prompts(per_minute)} in the last minute, the most allowed: "
            f"try again in {wait} s.",
            retry_after=wait,
        )


def _prompts(count: int) -> str:
    return f"{count} prompt" if count == 1 else f"{count} prompts"


def submit_prompt(
    job: TrainingJob, *, prompt: str, max_new_tokens: int, temperature: float, top_p: float
) -> PlaygroundRun:
    """Save the run as queued, then queue its generation once the row is committed."""
    reason = unavailable_reason(job)
    if reason:
        raise PlaygroundUnavailable(reason)
    from jobs import tasks

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        # Lock the owner's row so that prompts sent at the same moment are counted one after another.
        list(get_user_model().objects.select_for_update().filter(pk=job.owner_id).values_list("pk"))
        check_prompt_limits(job.owner_id)
        run = PlaygroundRun.objects.create(
            job=job,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            base_label=base_label(job),
            celery_task_id=task_id,
        )
        # With the broker down, the run waits queued and the stale-run reaper fails it visibly.
        broker.send_on_commit(tasks.run_playground, (run.pk,), task_id)
    return run


# --- State changes (conditional updates: a repeated task never runs twice) ------------


def claim_run(run_id: int) -> bool:
    return bool(
        PlaygroundRun.objects.filter(pk=run_id, status=PlaygroundStatus.QUEUED).update(
            status=PlaygroundStatus.RUNNING, started_at=timezone.now()
        )
    )


def finish_run(run_id: int, **fields: Any) -> bool:
    return bool(
        PlaygroundRun.objects.filter(pk=run_id, status=PlaygroundStatus.RUNNING).update(
            status=PlaygroundStatus.DONE, finished_at=timezone.now(), **fields
        )
    )


def fail_run(run_id: int, message: str, **fields: Any) -> bool:
    return bool(
        PlaygroundRun.objects.filter(
            pk=run_id, status__in=(PlaygroundStatus.QUEUED, PlaygroundStatus.RUNNING)
        ).update(
            status=PlaygroundStatus.FAILED,
            error=message[:MAX_ERROR_CHARS],
            finished_at=timezone.now(),
            **fields,
        )
    )


def fail_stale_runs() -> list[int]:
    """Fail runs whose worker died mid-generation, or that no worker picked up. Returns their ids."""
    now = timezone.now()
    limit = settings.PLAYGROUND_TIME_LIMIT_SECONDS
    stale_running = PlaygroundRun.objects.filter(
        status=PlaygroundStatus.RUNNING, started_at__lt=now - timedelta(seconds=limit) - RUNNING_GRACE
    ).values_list("pk", flat=True)
    stale_queued = PlaygroundRun.objects.filter(
        status=PlaygroundStatus.QUEUED, created_at__lt=now - QUEUED_TIMEOUT
    ).values_list("pk", flat=True)
    failed = []
    for run_id in list(stale_running):
        if fail_run(run_id, f"The worker stopped while generating: no answer after {limit} s."):
            failed.append(run_id)
    for run_id in list(stale_queued):
        if fail_run(run_id, "No worker picked this prompt up; is a worker running on the playground queue?"):
            failed.append(run_id)
    return failed


# --- Generation (worker process) ---------------------------------------------------


def run_generation(run_id: int) -> None:
    """Answer one run with the tuned model and the base. Any error becomes a failed run."""
    if not claim_run(run_id):
        return
    run = PlaygroundRun.objects.select_related("job__base_model", "job__dataset").filter(pk=run_id).first()
    if run is None:  # the job was deleted meanwhile
        return
    job = run.job
    from jobs.playground import generation  # torch and transformers: worker only

    outcome = generation.Outcome()
    try:
        generation.compare(
            tuned_key=f"tuned:{job.pk}:{artifacts.model_identity(job)}",
            tuned_folder=lambda: model_folder(job),
            base=base_model_id(job),
            base_key=(
                f"untrained:{job.pk}:{artifacts.model_identity(job)}"
                if is_scratch(job)
                else f"base:{base_model_id(job)}"
            ),
            request=generation.Request(
                prompt=run.prompt,
                max_new_tokens=run.max_new_tokens,
                temperature=run.temperature,
                top_p=run.top_p,
                seed=run.pk,
                chat=is_chat(job),
                untrained_seed=UNTRAINED_SEED,
            ),
            outcome=outcome,
            cache=MODEL_CACHE,
        )
    except SoftTimeLimitExceeded:
        message = f"Generation took longer than {settings.PLAYGROUND_TIME_LIMIT_SECONDS} s and was stopped."
        fail_run(run_id, message, **outcome.fields())
    except (generation.GenerationError, artifacts.ModelArtifactsError) as error:
        fail_run(run_id, str(error), **outcome.fields())
    except Exception as error:
        logger.exception("playground run %s failed", run_id)
        fail_run(run_id, f"Generation failed: {type(error).__name__}: {error}", **outcome.fields())
    else:
        finish_run(run_id, **outcome.fields())
