"""The local training queue: who goes next, each queued job's place in line, and its limits.

- Fair pick. Each queued local job sends one token task to the "training" queue; the worker that
  takes a token claims the fairest queued job, whichever job the token names: the owner with the
  fewest jobs running goes first, then the one served longest ago (never served: first), and
  within one owner the oldest job (FIFO). The row is locked with SKIP LOCKED, so two workers never
  claim the same job. Tokens are never fewer than queued jobs: a claimed job's own token still in
  the broker is handed to the job the used token named (`resend_lost_jobs` reads task ids), and a
  token left over (a job stopped while queued) finds the queue empty and does nothing.
- Place in line. The same order, played forward over the training slots: each running job frees
  its slot after its time left, each queued one holds it for its estimate.
- Worker heartbeats. Every Celery worker's main process writes a `WorkerHeartbeat` row every
  WORKER_BEAT_SECONDS (llmtuner/celery.py), even while its pool runs an hours-long training, so
  "no worker" means no worker, not a busy one. A database row rather than Celery's ping (a
  broadcast round trip on each poll of the page) or Celery events (a listener process to run).
- Limits. A local job estimated past MAX_JOB_RUNTIME_SECONDS is refused; so is one over its owner's
  cap on local jobs running or queued (LOCAL_JOBS_PER_USER, or the user's LocalJobAllowance).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, F, Max, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.estimate import format_duration
from jobs.models import (
    ACTIVE_STATES,
    Backend,
    JobStatus,
    LocalJobAllowance,
    TrainingJob,
    WorkerHeartbeat,
)

TRAINING_QUEUE = "training"
WORKER_BEAT_SECONDS = 10
# Three beats missed: the worker is gone (or its main process is stuck).
WORKER_ALIVE_SECONDS = 35
FORGOTTEN_AFTER_SECONDS = 24 * 3600
LOCAL_WAITING = (JobStatus.QUEUED, *ACTIVE_STATES)


# --- Worker heartbeats -------------------------------------------------------------------------


def record_worker_beat(name: str, queues: list[str], now: datetime | None = None) -> None:
    now = now or timezone.now()
    WorkerHeartbeat.objects.update_or_create(
        name=name[:255], defaults={"queues": f",{','.join(sorted(queues))},"[:500], "beat_at": now}
    )
    # A worker killed outright never says goodbye (each container start is a new name): its row goes.
    WorkerHeartbeat.objects.filter(beat_at__lt=now - timedelta(seconds=FORGOTTEN_AFTER_SECONDS)).delete()


def forget_worker(name: str) -> None:
    """A worker shutting down says so, rather than looking alive for WORKER_ALIVE_SECONDS more."""
    WorkerHeartbeat.objects.filter(name=name[:255]).delete()


def workers_alive(queue: str = TRAINING_QUEUE, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(seconds=WORKER_ALIVE_SECONDS)
    return WorkerHeartbeat.objects.filter(queues__contains=f",{queue},", beat_at__gte=cutoff).count()


# --- The fair pick -----------------------------------------------------------------------------


def fair_order(queued: QuerySet[TrainingJob]) -> QuerySet[TrainingJob]:
    """Queued local jobs in the order they should start (see the module's docstring)."""
    owners_jobs = TrainingJob.objects.filter(owner=OuterRef("owner"), backend=Backend.LOCAL).order_by()
    running = owners_jobs.filter(status__in=ACTIVE_STATES).values("owner").annotate(n=Count("pk")).values("n")
    last_started = (
        owners_jobs.filter(started_at__isnull=False)
        .values("owner")
        .annotate(last=Max("started_at"))
        .values("last")
    )
    return queued.annotate(
        owner_running=Coalesce(Subquery(running), 0), owner_last_started=Subquery(last_started)
    ).order_by("owner_running", F("owner_last_started").asc(nulls_first=True), "created_at", "pk")


def claim_next_local_job(token_job_id: int, token_id: str | None) -> int | None:
    """Claim the fairest queued local job for this worker (moved to preparing); None when none waits.

    `token_job_id` and `token_id` name the token task this worker took: when it claims another job,
    that job's own token (still in the broker) now stands for the token's job, if it still waits.
    """
    from jobs import lifecycle

    with transaction.atomic():
        queued = TrainingJob.objects.filter(status=JobStatus.QUEUED, backend=Backend.LOCAL)
        job = (
            fair_order(queued)
            .select_for_update(skip_locked=True, of=("self",))
            .only("pk", "celery_task_id")
            .first()
        )
        if job is None:
            return None
        if not lifecycle.transition(job.pk, JobStatus.PREPARING, "Preparing the data and the model"):
            return None
    if job.pk != token_job_id and token_id:
        TrainingJob.objects.filter(pk=token_job_id, status=JobStatus.QUEUED, celery_task_id=token_id).update(
            celery_task_id=job.celery_task_id
        )
    return job.pk


# --- Place in line -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuePlace:
    position: int  # 1 = next to start
    starts_in_seconds: float  # math.inf: unknown (a job ahead has no estimate)
    workers: int  # training workers alive

    @property
    def ahead(self) -> int:
        return self.position - 1

    def describe(self) -> str:
        """`2nd in line: 1 job ahead, about 4 min`."""
        ahead = "no job" if not self.ahead else f"{self.ahead} job{'s' if self.ahead != 1 else ''}"
        text = f"{ordinal(self.position)} in line: {ahead} ahead"
        if not self.workers:
            return text
        if self.starts_in_seconds == 0:
            return f"{text}, starting now"
        if math.isfinite(self.starts_in_seconds):
            return f"{text}, about {format_duration(self.starts_in_seconds)}"
        return text


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def time_left(job: dict, now: datetime) -> float:
    """A running job's seconds still to go: the script's own figure, else the estimate less the time spent."""
    if job["eta_seconds"] is not None:
        return max(0.0, float(job["eta_seconds"]))
    if job["estimated_seconds"] is None:
        return math.inf
    spent = (now - job["started_at"]).total_seconds() if job["started_at"] else 0.0
    return max(0.0, job["estimated_seconds"] - spent)


def line(now: datetime | None = None) -> dict[int, QueuePlace]:
    """Every queued local job's place: the fair pick played forward over the training slots.

    Two queries, whatever the queue's length: the local jobs waiting or running (with when each
    one's owner was last served), and the training workers alive.
    """
    now = now or timezone.now()
    last_started = (
        TrainingJob.objects.filter(owner=OuterRef("owner"), backend=Backend.LOCAL, started_at__isnull=False)
        .order_by()
        .values("owner")
        .annotate(last=Max("started_at"))
        .values("last")
    )
    jobs = list(
        TrainingJob.objects.filter(backend=Backend.LOCAL, status__in=LOCAL_WAITING)
        .annotate(owner_last_started=Subquery(last_started))
        .order_by("created_at", "pk")
        .values(
            "pk",
            "status",
            "owner_id",
            "owner_last_started",
            "started_at",
            "estimated_seconds",
            "eta_seconds",
        )
    )
    queued = [job for job in jobs if job["status"] == JobStatus.QUEUED]
    if not queued:
        return {}
    running = [job for job in jobs if job["status"] != JobStatus.QUEUED]
    served = {job["owner_id"]: job["owner_last_started"] for job in jobs if job["owner_last_started"]}
    last_served = {owner: started.timestamp() for owner, started in served.items()}
    running_count = Counter(job["owner_id"] for job in running)
    workers = workers_alive(now=now)
    order = itertools.count()  # ties between slots that free at once: the first listed
    # (time the slot frees, tie-break, the owner whose job frees it)
    slots = [(time_left(job, now), next(order), job["owner_id"]) for job in running]
    slots += [(0.0, next(order), None) for _ in range(max(1, workers) - len(running))]
    heapq.heapify(slots)
    turn = now.timestamp()
    places: dict[int, QueuePlace] = {}
    while queued:
        free_at, _, finished_owner = heapq.heappop(slots)
        if finished_owner is not None:
            running_count[finished_owner] -= 1
        job = min(
            queued,
            key=lambda j: (running_count[j["owner_id"]], last_served.get(j["owner_id"], -math.inf)),
        )  # min keeps the first of equals: the oldest, as `queued` is in creation order
        queued.remove(job)
        owner = job["owner_id"]
        places[job["pk"]] = QueuePlace(len(places) + 1, free_at, workers)
        running_count[owner] += 1
        turn += 1
        last_served[owner] = turn
        duration = job["estimated_seconds"] if job["estimated_seconds"] is not None else math.inf
        heapq.heappush(slots, (free_at + duration, next(order), owner))
    return places


# --- Limits ------------------------------------------------------------------------------------


def runtime_refusal(backend: str, estimated_seconds: int | None) -> str | None:
    """Why a local job estimated at `estimated_seconds` may not run here; None when it may."""
    cap = settings.MAX_JOB_RUNTIME_SECONDS
    if backend != Backend.LOCAL or estimated_seconds is None or estimated_seconds <= cap:
        return None
    return (
        f"This job is estimated at {format_duration(estimated_seconds)}, past the "
        f"{format_duration(cap)} a job may run on this machine (it would be stopped there): train "
        "for fewer epochs or steps, choose a smaller model, or train on SageMaker."
    )


def local_job_limit(user) -> int:
    allowance = LocalJobAllowance.objects.filter(user=user).values_list("local_jobs", flat=True).first()
    return settings.LOCAL_JOBS_PER_USER if allowance is None else allowance


def local_jobs_refusal(user, planned: int = 0) -> str | None:
    """Why `user` may not queue one more local job (with `planned` more of a manifest before it)."""
    waiting = TrainingJob.objects.filter(owner=user, backend=Backend.LOCAL, status__in=LOCAL_WAITING)
    counts = waiting.aggregate(
        queued=Count("pk", filter=Q(status=JobStatus.QUEUED)),
        running=Count("pk", filter=~Q(status=JobStatus.QUEUED)),
    )
    limit = local_job_limit(user)
    have = counts["queued"] + counts["running"]
    if have + planned + 1 <= limit:
        return None
    if limit == 0:
        return "Local training is not open to this account (its limit is 0 local jobs): train on SageMaker."
    earlier = f", and {planned} earlier in this manifest" if planned else ""
    return (
        f"At most {limit} local job{'s' if limit != 1 else ''} per user may be running or queued at once; "
        f"{user.email} has {have} ({counts['running']} running, {counts['queued']} queued){earlier}. "
        "Wait for one to end, or stop one, then launch again."
    )


def lock_owner(user) -> None:
    """Inside a transaction: one launch at a time per user, so two at once cannot both pass the cap."""
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))


def check_manifest_limits(entries: list) -> None:
    """The local entries of each user must fit, together, in that user's cap on local jobs."""
    planned: dict[int, int] = defaultdict(int)
    for entry in entries:
        if not entry.pending or entry.backend != Backend.LOCAL or entry.user is None:
            continue
        refusal = local_jobs_refusal(entry.user, planned[entry.user.pk])
        if refusal:
            entry.problem("backend", refusal)
        else:
            planned[entry.user.pk] += 1
