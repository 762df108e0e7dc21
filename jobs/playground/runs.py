"""Playground runs: prompts tried on a completed job, answered by its tuned model and by its base.

The web process only saves a `PlaygroundRun` and queues `run_playground` after commit. The
worker claims the run, gets the tuned model's folder and the loaded models from
`jobs.playground.cache`, and generates with `jobs.playground.generation` - the only module
here that imports torch, imported inside `run_generation` so the web process never loads it.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from jobs import artifacts
from jobs.models import JobStatus, PlaygroundRun, PlaygroundStatus, PlaygroundVote, TrainingJob
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


def rival_label(rival: TrainingJob) -> str:
    return f"{rival.name} (job {rival.pk})"


def rival_jobs(job: TrainingJob):
    """The owner's other completed jobs of the same dataset: what this job can be compared with."""
    if job.dataset_id is None:
        return TrainingJob.objects.none()
    return (
        TrainingJob.objects.filter(
            owner_id=job.owner_id, dataset_id=job.dataset_id, status=JobStatus.COMPLETED
        )
        .exclude(pk=job.pk)
        .select_related("base_model")
        .order_by("-created_at")
    )


def rival_unavailable_reason(job: TrainingJob, rival: TrainingJob) -> str | None:
    if rival.pk == job.pk or rival.owner_id != job.owner_id or rival.dataset_id != job.dataset_id:
        return "A job can be compared only with another of your jobs trained on the same dataset."
    if rival.status != JobStatus.COMPLETED:
        return f"“{rival.name}” has not completed: it has no tuned model to answer with."
    return None


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
    job: TrainingJob,
    *,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    blind: bool = False,
    rival: TrainingJob | None = None,
) -> PlaygroundRun:
    """Save the run as queued, then queue its generation once the row is committed.

    With `rival`, another completed job of the same dataset answers in the base's place.
    """
    reason = unavailable_reason(job)
    if reason:
        raise PlaygroundUnavailable(reason)
    if rival is not None:
        rival_refusal = rival_unavailable_reason(job, rival)
        if rival_refusal:
            raise PlaygroundUnavailable(rival_refusal)
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
            base_label=rival_label(rival) if rival else base_label(job),
            celery_task_id=task_id,
            rival_job=rival,
            rival_name=rival.name[:200] if rival else "",
            blind=blind,
            tuned_first=draw_tuned_first() if blind else True,
        )
        # With the broker down, the run waits queued and the stale-run reaper fails it visibly.
        broker.send_on_commit(tasks.run_playground, (run.pk,), task_id)
    return run


# --- Blind votes ---------------------------------------------------------------------------


class VoteRefused(Exception):
    """The run cannot take this vote; the message says why."""


BLIND_CHOICES = ("a", "b", "tie")


def draw_tuned_first() -> bool:
    """Which answer a blind run shows as A: a fair draw the owner cannot predict."""
    return secrets.choice((True, False))


def cast_vote(run: PlaygroundRun, choice: str) -> str:
    """Record the owner's pick of a blind run ("a", "b" or "tie"); returns the vote kept (tuned/base/tie)."""
    if not run.blind:
        raise VoteRefused("Only blind prompts take a vote: both answers were labelled.")
    if choice not in BLIND_CHOICES:
        raise VoteRefused("Pick A, B or a tie.")
    if choice == "tie":
        vote = PlaygroundVote.TIE
    else:
        a_is_tuned = run.tuned_first
        vote = PlaygroundVote.TUNED if (choice == "a") == a_is_tuned else PlaygroundVote.BASE
    # One vote per run, however many requests arrive: the update only takes an unvoted, answered run.
    updated = PlaygroundRun.objects.filter(
        pk=run.pk, blind=True, status=PlaygroundStatus.DONE, vote=""
    ).update(vote=vote, voted_at=timezone.now())
    if not updated:
        run.refresh_from_db(fields=["vote", "status"])
        if run.vote:
            raise VoteRefused("This prompt already has your vote.")
        raise VoteRefused("Vote once both answers are there.")
    return vote


def vote_tally(job: TrainingJob) -> dict[str, dict]:
    """This job's blind votes: against its base model, and against other jobs of its dataset (on
    either side of the pair). Two queries."""
    voted = PlaygroundRun.objects.filter(blind=True).exclude(vote="")
    vs_base = voted.filter(job=job, rival_job__isnull=True, rival_name="").aggregate(
        wins=Count("pk", filter=Q(vote=PlaygroundVote.TUNED)),
        losses=Count("pk", filter=Q(vote=PlaygroundVote.BASE)),
        ties=Count("pk", filter=Q(vote=PlaygroundVote.TIE)),
    )
    as_first, as_rival = Q(job=job) & ~Q(rival_name=""), Q(rival_job=job)
    vs_jobs = voted.filter(as_first | as_rival).aggregate(
        wins=Count(
            "pk", filter=(as_first & Q(vote=PlaygroundVote.TUNED)) | (as_rival & Q(vote=PlaygroundVote.BASE))
        ),
        losses=Count(
            "pk", filter=(as_first & Q(vote=PlaygroundVote.BASE)) | (as_rival & Q(vote=PlaygroundVote.TUNED))
        ),
        ties=Count("pk", filter=Q(vote=PlaygroundVote.TIE)),
    )
    for counts in (vs_base, vs_jobs):
        counts["total"] = counts["wins"] + counts["losses"] + counts["ties"]
        counts["win_rate"] = round(100 * counts["wins"] / counts["total"]) if counts["total"] else None
    return {"vs_base": vs_base, "vs_jobs": vs_jobs, "total": vs_base["total"] + vs_jobs["total"]}


def preference_lines(job: TrainingJob) -> Iterator[str]:
    """The decided blind votes as a preference dataset: one JSON line of prompt, chosen, rejected each."""
    decided = (
        PlaygroundRun.objects.filter(
            job=job, blind=True, vote__in=(PlaygroundVote.TUNED, PlaygroundVote.BASE)
        )
        .order_by("voted_at", "pk")
        .values_list("prompt", "tuned_output", "base_output", "vote")
    )
    for prompt, tuned, base, vote in decided.iterator():
        chosen, rejected = (tuned, base) if vote == PlaygroundVote.TUNED else (base, tuned)
        yield (
            json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False) + "\n"
        )


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
    if run.rival_name and run.rival_job_id is None:
        fail_run(run_id, f"“{run.rival_name}”, the job this prompt was to compare with, was deleted.")
        return
    from jobs.playground import generation  # torch and transformers: worker only

    rival = None
    if run.rival_job_id:
        other = TrainingJob.objects.select_related("base_model").get(pk=run.rival_job_id)
        rival = generation.Rival(
            key=f"tuned:{other.pk}:{artifacts.model_identity(other)}",
            folder=lambda: model_folder(other),
            base=base_model_id(other),
            label=rival_label(other),
        )
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
            rival=rival,
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
