"""The one owner of a training job's state.

Both backends feed the same events here (the JSON lines of finetune.py, and
the states they observe). Every change is a conditional update against the
legal source states, so a late or repeated event never moves a job backwards,
and two writers racing cannot both win.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from jobs import resume
from jobs.estimate import PHASES
from jobs.models import ACTIVE_STATES, FINAL_STATES, Backend, JobStatus, LogLine, MetricPoint, TrainingJob
from llmtuner import broker
from llmtuner.redact import redact
from llmtuner.text import storable

logger = logging.getLogger(__name__)

S = JobStatus
# to-state: the states it may be entered from.
ALLOWED_FROM: dict[str, frozenset[str]] = {
    S.PREPARING: frozenset({S.QUEUED}),
    S.TRAINING: frozenset({S.QUEUED, S.PREPARING}),
    S.UPLOADING: frozenset({S.PREPARING, S.TRAINING}),
    S.COMPLETED: frozenset({S.PREPARING, S.TRAINING, S.UPLOADING, S.STOPPING}),
    S.FAILED: frozenset({S.QUEUED, S.PREPARING, S.TRAINING, S.UPLOADING, S.STOPPING}),
    S.STOPPING: frozenset({S.QUEUED, S.PREPARING, S.TRAINING, S.UPLOADING}),
    S.STOPPED: frozenset({S.QUEUED, S.PREPARING, S.TRAINING, S.UPLOADING, S.STOPPING}),
    S.QUEUED: frozenset(),
}
# How far along each state is; used to keep a job's state from going backwards.
RANK = {
    S.QUEUED: 0,
    S.PREPARING: 1,
    S.TRAINING: 2,
    S.UPLOADING: 3,
    S.STOPPING: 4,
    S.COMPLETED: 5,
    S.FAILED: 5,
    S.STOPPED: 5,
}
PROGRESSING_STATES = (S.PREPARING, S.TRAINING)
# What the start event says that estimates learn from (jobs.history).
RUN_FACTS = ("total_parameters", "precision", "world_size", "sharding", "max_seq_length", "method", "device")
LOG_TAIL_LINES = 500
MAX_LOG_LINE_CHARS = 2000


def _kept(text: str) -> str:
    """Text a script or a library printed, as the owner reads it and we keep it: no token, no NUL."""
    return storable(redact(text))


def can_transition(current: str, target: str) -> bool:
    return current in ALLOWED_FROM[target]


def transition(
    job_id: int, target: str, message: str | None = None, *, only_from: set[str] | None = None, **fields
) -> bool:
    """Move the job to `target` if that is legal from where it is now. Returns whether it moved.

    `only_from` narrows the legal source states further (e.g. stop at once only if still queued).
    """
    sources = ALLOWED_FROM[target] & only_from if only_from is not None else ALLOWED_FROM[target]
    now = timezone.now()
    updates = {"status": target, **fields}
    if message is not None:
        updates["status_message"] = _kept(message)[:1000]
    if target == S.PREPARING:
        updates.update(started_at=now, heartbeat_at=now)
        updates.update(phase="starting", phase_started_at=now, phase_timeline={"starting": 0.0})
    elif target == S.TRAINING:
        updates.update(training_started_at=Coalesce(F("training_started_at"), now), heartbeat_at=now)
        updates.setdefault("started_at", Coalesce(F("started_at"), now))
    elif target == S.STOPPING:
        updates["stop_requested_at"] = now
    elif target in FINAL_STATES:
        updates["finished_at"] = now
        updates["eta_seconds"] = None
        updates.update(_failed_if_an_operator_said_so(target, updates.get("status_message")))
    if target == S.COMPLETED:
        updates["step"] = Greatest(F("step"), F("total_steps"))
    with transaction.atomic():
        moved = TrainingJob.objects.filter(pk=job_id, status__in=sources).update(**updates) == 1
        if moved and target in FINAL_STATES:
            from jobs.tasks import notify_job_finished

            broker.send_on_commit(notify_job_finished, (job_id,))
    if moved:
        logger.info("job %s -> %s %s", job_id, target, message or "")
        if target == S.UPLOADING:
            enter_phase(job_id, "uploading")
        elif target in FINAL_STATES:
            from jobs import history

            history.record_when_committed(job_id)
    return moved


def _failed_if_an_operator_said_so(target: str, message: str | None) -> dict:
    """A job an operator marked failed ends failed with their reason, however its work ends.

    So each backend stops it the way it stops any job (and may then say stopped, or even
    completed, if the work ended first), and no backend needs a case of its own.
    """
    marked = ~Q(fail_reason="")
    kept_message = Value(message) if message is not None else F("status_message")
    return {
        "status": Case(When(marked, then=Value(S.FAILED)), default=Value(target)),
        "status_message": Case(When(marked, then=F("fail_reason")), default=kept_message),
    }


def record_event(job_id: int, event: dict) -> None:
    """Apply one progress-protocol event from finetune.py (either backend)."""
    kind = event.get("event")
    if kind == "start":
        transition(job_id, S.TRAINING, "Training", total_steps=_int(event.get("total_steps")))
        if "resumed_from_step" in event:  # C1: 0 when it started over
            resume.record_resumed(job_id, _int(event["resumed_from_step"]) or 0)
        facts = {k: event[k] for k in RUN_FACTS if event.get(k) is not None}
        TrainingJob.objects.filter(pk=job_id).exclude(status__in=FINAL_STATES).update(run_facts=facts)
    elif kind == "phase":
        if event.get("phase") in PHASES:
            enter_phase(job_id, event["phase"])
    elif kind == "progress":
        _record_progress(job_id, event)
    elif kind == "eval":
        _record_eval(job_id, event)
    elif kind in ("done", "stopped"):
        # A stopped run's figures say whether it saved its model so far (`model_saved`).
        metrics = {k: v for k, v in event.items() if k != "event"}
        TrainingJob.objects.filter(pk=job_id).exclude(status__in=FINAL_STATES).update(metrics=metrics)
    elif kind == "checkpoint":
        resume.record_checkpoint(job_id, _int(event.get("step")))
    elif kind == "error":
        message = str(event.get("message") or "Training failed")
        # A job being stopped ends stopped, whatever the script says on its way out.
        if not TrainingJob.objects.filter(pk=job_id, status=S.STOPPING).exists():
            transition(job_id, S.FAILED, message)


def enter_phase(job_id: int, phase: str, *, only_from: tuple[str, ...] = ()) -> None:
    """The job's run is now in `phase`; its first entry (seconds after started_at) is kept for history."""
    now = timezone.now()
    with transaction.atomic():
        row = (
            TrainingJob.objects.select_for_update()
            .filter(pk=job_id)
            .exclude(status__in=FINAL_STATES)
            .filter(**({"phase__in": only_from} if only_from else {}))
            .values_list("started_at", "phase_timeline")
            .first()
        )
        if row is None:
            return
        started_at, timeline = row
        timeline = dict(timeline or {})
        if started_at is not None:
            timeline.setdefault(phase, round((now - started_at).total_seconds(), 3))
        TrainingJob.objects.filter(pk=job_id).update(
            phase=phase, phase_started_at=now, phase_timeline=timeline
        )


def _record_progress(job_id: int, event: dict) -> None:
    step = _int(event.get("step"))
    if step is None:
        return
    if TrainingJob.objects.filter(pk=job_id, status__in=(S.QUEUED, S.PREPARING)).exists():
        transition(job_id, S.TRAINING, "Training")
    fields = {
        "step": step,
        "epoch": _float(event.get("epoch")) or 0,
        "loss": _float(event.get("loss")),
        "learning_rate": _float(event.get("learning_rate")),
        "tokens_per_second": _float(event.get("tokens_per_second")),
        "eta_seconds": _float(event.get("eta_seconds")),
        "heartbeat_at": timezone.now(),
    }
    total = _int(event.get("total_steps"))
    if total:
        fields["total_steps"] = total
    fields = {k: v for k, v in fields.items() if v is not None or k in ("eta_seconds",)}
    # step__lte keeps a late event from rewinding the bar; the state filter
    # keeps a stopped or finished job as it ended.
    moved = (
        TrainingJob.objects.filter(pk=job_id, step__lte=step, status__in=(S.TRAINING, S.STOPPING)).update(
            **fields
        )
        == 1
    )
    loss = _float(event.get("loss"))
    if moved and loss is not None:
        point_exists = MetricPoint.objects.filter(job_id=job_id, step=step, loss__isnull=False).exists()
        if not point_exists:
            MetricPoint.objects.create(
                job_id=job_id,
                step=step,
                epoch=_float(event.get("epoch")),
                loss=loss,
                learning_rate=_float(event.get("learning_rate")),
            )


def _record_eval(job_id: int, event: dict) -> None:
    eval_loss = _float(event.get("eval_loss"))
    step = _int(event.get("step"))
    if eval_loss is None or step is None:
        return
    updated = (
        TrainingJob.objects.filter(pk=job_id)
        .exclude(status__in=FINAL_STATES)
        .update(eval_loss=eval_loss, heartbeat_at=timezone.now())
    )
    if updated and not MetricPoint.objects.filter(job_id=job_id, step=step, eval_loss__isnull=False).exists():
        MetricPoint.objects.create(
            job_id=job_id, step=step, eval_loss=eval_loss, epoch=_float(event.get("epoch"))
        )


def append_log(job_id: int, lines: list[str]) -> None:
    """Add lines to the job's log tail in the database, keeping the last LOG_TAIL_LINES."""
    lines = [_kept(line.rstrip())[:MAX_LOG_LINE_CHARS] for line in lines if line.strip()]
    if not lines:
        return
    with transaction.atomic():
        first = (
            TrainingJob.objects.select_for_update()
            .filter(pk=job_id)
            .values_list("log_seq", flat=True)
            .first()
        )
        if first is None:
            return
        LogLine.objects.bulk_create(
            LogLine(job_id=job_id, seq=first + i + 1, text=text) for i, text in enumerate(lines)
        )
        last = first + len(lines)
        TrainingJob.objects.filter(pk=job_id).update(log_seq=last)
        # Trim in batches rather than on every call.
        if last // 100 != first // 100:
            LogLine.objects.filter(job_id=job_id, seq__lte=last - LOG_TAIL_LINES).delete()


def heartbeat(job_id: int) -> None:
    TrainingJob.objects.filter(pk=job_id).update(heartbeat_at=timezone.now())


def request_stop(job: TrainingJob) -> bool:
    """Stop a job for its owner. A queued job stops at once; a running one goes to stopping."""
    if transition(job.pk, S.STOPPED, "Stopped before it started", only_from={S.QUEUED}):
        return True
    if not transition(job.pk, S.STOPPING, "Stopping…"):
        return False
    _stop_the_work(job)
    return True


def mark_failed(job: TrainingJob, reason: str) -> str | None:
    """An operator fails a job: its work is stopped first, then it ends failed with `reason`.

    Returns the job's state now: failed (it was still queued), stopping (it ends failed once its
    work has stopped), or None when it had already ended.
    """
    if transition(job.pk, S.FAILED, reason, only_from={S.QUEUED}):
        return S.FAILED
    reason = _kept(reason)[:1000]
    message = f"Stopping, to be marked failed: {reason}"[:1000]
    stopping = transition(job.pk, S.STOPPING, message, fail_reason=reason)
    # One its owner was stopping already ends failed too.
    stopped_by_its_owner = TrainingJob.objects.filter(pk=job.pk, status=S.STOPPING)
    if not stopping and not stopped_by_its_owner.update(fail_reason=reason):
        return None
    _stop_the_work(job)
    return S.STOPPING


def _stop_the_work(job: TrainingJob) -> None:
    # The local worker sees `stopping` on its next heartbeat and signals the script;
    # a SageMaker job is stopped by a task, and the poller sees it end.
    if job.backend == Backend.SAGEMAKER:
        from jobs.tasks import stop_sagemaker_job

        # Sent after commit and never raising: a stop the broker lost is sent again by the poller.
        broker.send_on_commit(stop_sagemaker_job, (job.pk,))


def reap_stale_jobs(now: datetime | None = None) -> list[int]:
    """Fail local jobs whose worker stopped writing heartbeats."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.LOCAL_JOB_HEARTBEAT_TIMEOUT)
    stale = TrainingJob.objects.filter(
        backend=Backend.LOCAL, status__in=ACTIVE_STATES, heartbeat_at__lt=cutoff
    ).values_list("pk", "heartbeat_at", "status", "fail_reason")
    reaped = []
    for job_id, last_beat, status, fail_reason in stale:
        when = timezone.localtime(last_beat).strftime("%Y-%m-%d %H:%M:%S %Z")
        target = S.STOPPED if status == S.STOPPING and not fail_reason else S.FAILED
        message = f"The worker stopped responding at {when}; the job was marked {target}. You can retry it."
        if transition(job_id, target, message):
            append_log(job_id, [message])
            reaped.append(job_id)
    return reaped


def describe_event(event: dict) -> str:
    """One readable log line for a progress-protocol event (either backend)."""
    kind = event["event"]
    if kind == "progress":
        return (
            f"step {event.get('step')}/{event.get('total_steps')} loss {_fmt(event.get('loss'))} "
            f"lr {_fmt(event.get('learning_rate'))} {_fmt(event.get('tokens_per_second'))} tokens/s"
        )
    if kind == "eval":
        return f"eval at step {event.get('step')}: loss {_fmt(event.get('eval_loss'))}"
    if kind == "error":
        return f"error: {event.get('message')}"
    if kind == "start":
        resumed = event.get("resumed_from_step")
        return (
            f"training {event.get('total_steps')} steps on {event.get('samples')} samples "
            f"({event.get('tokens')} tokens), {event.get('trainable_parameters')} trainable parameters "
            f"on {event.get('device')} ({event.get('precision')})"
        ) + (f", resumed from the checkpoint at step {resumed}" if resumed else "")
    if kind == "done":
        return (
            f"done: training loss {_fmt(event.get('train_loss'))}, eval loss {_fmt(event.get('eval_loss'))}, "
            f"perplexity {_fmt(event.get('perplexity'))}, {_fmt(event.get('tokens_per_second'))} tokens/s"
        )
    if kind == "stopped":
        saved = "model so far saved" if event.get("model_saved") else "nothing saved"
        return f"stopped at step {event.get('step')} ({saved})"
    if kind == "checkpoint":
        return f"checkpoint at step {event.get('step')}"
    if kind == "phase":
        return f"phase: {str(event.get('phase')).replace('_', ' ')}"
    return json.dumps(event)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
