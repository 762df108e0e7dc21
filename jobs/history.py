"""What this platform's own runs measured, and the estimates and time left that follow from it.

Every job that ends completed (or stopped after MIN_STEPS_TO_LEARN steps) leaves a RunRecord:
its key (model, backend and instance type, method, precision, sequence length, world size)
and what it measured (trained tokens per second of the training phase, seconds of every
other phase, SageMaker's training and billable seconds).

An estimate reads the last HISTORY_LIMIT records of the same backend and instance type in ONE
query (it runs on each change of the new-job form) and keeps the nearest: all of the key
first, then relaxing in this order, each step scaled the way the FLOPs model scales it:

1. the same model, method, precision, sequence length and world size ("similar runs");
2. any sequence length (throughput per token barely moves with it);
3. any world size (per-device FLOP/s, times this job's devices and SCALING_EFFICIENCY);
4. any precision (the one asked for: `auto` gives the same on one backend and instance type);
5. any method (FLOPs per token: 6 full, 4 LoRA);
6. the runs of the model nearest in parameter count (FLOP/s reached per device).

No record at all: the FLOPs model of jobs.estimate, "from the model's size".
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime
from typing import Any

from django.db import transaction

from jobs.estimate import (
    DEFAULT_PHASE_SECONDS,
    PHASES,
    SCALING_EFFICIENCY,
    Estimate,
    Measured,
    _p90,
    estimate_job,
    flops_per_token,
    format_duration,
)
from jobs.models import Backend, JobStatus, RunRecord, TrainingJob
from training_scripts.hyperparameters import DEFAULTS

PHASE_LABELS = {
    "starting": "Starting",
    "preparing_data": "Preparing data",
    "loading_model": "Loading the model",
    "training": "Training",
    "evaluating": "Evaluating",
    "saving": "Saving",
    "generating_samples": "Generating samples",
    "uploading": "Uploading",
}
# A stopped job teaches its throughput only after this many steps (the first are the slowest).
MIN_STEPS_TO_LEARN = 10
HISTORY_LIMIT = 200
# Of the runs at the nearest level, the estimate uses at most this many (newest first, or the
# nearest in model size at the last level).
RUNS_USED = 10
RECORD_FIELDS = (
    "hub_id",
    "parameters",
    "method",
    "precision",
    "max_seq_length",
    "world_size",
    "gradient_checkpointing",
    "completed",
    "tokens_per_second",
    "phase_seconds",
    "eval_passes",
    "eval_pass_seconds",
    "total_seconds",
    "billable_seconds",
)
# (the key fields that must match, what the basis says of runs at that level)
LEVELS = (
    (("hub_id", "method", "precision", "max_seq_length", "world_size"), "similar runs"),
    (("hub_id", "method", "precision", "world_size"), "runs of this model with other sequence lengths"),
    (("hub_id", "method", "precision"), "runs of this model on other device counts"),
    (("hub_id", "method"), "runs of this model in another precision"),
    (("hub_id",), "runs of this model with another method"),
    ((), "runs of {model}, the nearest model in size"),
)


# --- recording ------------------------------------------------------------------------------


def record_when_committed(job_id: int) -> None:
    # robust: a record that cannot be made is logged, and never undoes or breaks the job's own end.
    transaction.on_commit(lambda: record_finished_job(job_id), robust=True)


def record_finished_job(job_id: int) -> RunRecord | None:
    """Keep what a finished job measured; None when it has nothing to teach."""
    job = (
        TrainingJob.objects.select_related("base_model", "instance_type", "dataset").filter(pk=job_id).first()
    )
    if job is None or job.finished_at is None or job.started_at is None:
        return None
    completed = job.status == JobStatus.COMPLETED
    if not completed and not (job.status == JobStatus.STOPPED and job.step >= MIN_STEPS_TO_LEARN):
        return None
    phases = measured_phases(job)
    training = phases.get("training") or 0.0
    done = job.metrics or {}
    train_tokens = int(done.get("train_tokens") or 0)
    # Throughput in the estimate's own tokens (the dataset's count, which the estimate of a later
    # job multiplies by): the same units on both sides, whatever the model's own tokenizer counts.
    steps = job.step or int(done.get("step") or 0)
    # The evaluations within the training phase (all passes but the final one) are not steps.
    evaluations = done.get("evaluations") if isinstance(done.get("evaluations"), dict) else {}
    passes = int(evaluations.get("passes") or 0)
    per_pass = float(evaluations.get("seconds") or 0) / passes if passes else 0.0
    within = max(0, passes - (1 if "evaluating" in phases else 0))
    training = max(training - within * per_pass, 0.1 * training)
    per_step = planned_tokens_per_step(job)
    if training > 0 and steps and per_step:
        speed = steps * per_step / training
    elif completed and train_tokens and training > 0:
        speed = train_tokens / training
    else:
        speed = float(job.tokens_per_second or 0)
    if speed <= 0:
        return None
    if not completed:  # what a stop cut short says nothing about a whole run
        phases = {p: s for p, s in phases.items() if PHASES.index(p) < PHASES.index("training")}
    facts = job.run_facts or {}
    hp = job.hyperparameters or {}
    record, _ = RunRecord.objects.update_or_create(
        job=job,
        defaults={
            "hub_id": job.base_model.hub_id,
            # The catalogue's count, as the estimate of a later job reads it for its own model.
            "parameters": int(job.base_model.parameters),
            "backend": job.backend,
            "instance_type": job.instance_type.name if job.instance_type_id else "",
            "method": str(facts.get("method") or job.method),
            "precision": _precision(hp),
            "max_seq_length": int(facts.get("max_seq_length") or hp.get("max_seq_length") or 0),
            "world_size": int(facts.get("world_size") or 1),
            "gradient_checkpointing": bool(hp.get("gradient_checkpointing")),
            "completed": completed,
            "steps": steps,
            "train_tokens": train_tokens,
            "training_phase_seconds": training,
            "tokens_per_second": speed,
            "phase_seconds": phases,
            "eval_passes": passes,
            "eval_pass_seconds": per_pass,
            "total_seconds": (job.finished_at - job.started_at).total_seconds() if completed else None,
            "estimated_seconds": job.estimated_seconds,
            "billable_seconds": job.billable_seconds,
            "sagemaker_training_seconds": job.training_seconds,
            "finished_at": job.finished_at,
        },
    )
    return record


def planned_tokens_per_step(job: TrainingJob) -> float | None:
    """What the estimate counts as trained per step of this job (None once its dataset is gone)."""
    dataset = job.dataset
    if dataset is None:
        return None
    stats = dataset.stats or {}
    plan = estimate_job(
        tokens=int(stats.get("train_tokens") or dataset.tokens),
        samples=int(stats.get("train_samples") or dataset.samples),
        base_model=job.base_model,
        hyperparameters=job.hyperparameters or {},
        backend=job.backend,
        instance_type=job.instance_type,
        instance_count=job.instance_count,
    )
    return plan.train_tokens / plan.steps if plan.steps else None


def _precision(hp: dict) -> str:
    """The precision asked for (`auto`, `fp32`, `bf16`; empty before there was a choice): what the
    form knows of a new job, and on one backend and instance type `auto` always comes out the same."""
    # A job saved before it said, or one that leaves it out, trains at the default (`auto`).
    return str(hp.get("precision") or DEFAULTS.get("precision") or "")[:20]


def measured_phases(job: TrainingJob) -> dict[str, float]:
    """{phase: seconds} of a finished job: the script's own timings where it gave them (the done
    event's phase_seconds), the platform's clock for the rest (first entry of each phase)."""
    total = (job.finished_at - job.started_at).total_seconds()
    timeline = {p: float(t) for p, t in (job.phase_timeline or {}).items() if p in PHASES}
    seen = sorted(timeline.items(), key=lambda item: item[1])
    phases: dict[str, float] = {}
    for i, (phase, began) in enumerate(seen):
        ended = seen[i + 1][1] if i + 1 < len(seen) else total
        phases[phase] = phases.get(phase, 0.0) + max(0.0, ended - began)
    script = (job.metrics or {}).get("phase_seconds") or {}
    if isinstance(script, dict) and script:
        for phase, seconds in script.items():
            if phase in PHASES and isinstance(seconds, int | float) and seconds >= 0:
                phases[phase] = float(seconds)
        # The start-up is what the script's phases and the upload leave of the whole.
        inside = sum(s for p, s in phases.items() if p != "starting")
        if "starting" in phases or job.status == JobStatus.COMPLETED:
            phases["starting"] = max(0.0, total - inside)
    return {phase: round(phases[phase], 3) for phase in PHASES if phase in phases}


# --- estimating -----------------------------------------------------------------------------


def estimate_for(
    dataset, base_model, hyperparameters: dict, backend: str, instance_type=None, instance_count: int = 1
) -> Estimate:
    """The estimate of a job on `dataset`: from the nearest runs measured here, else the model's size."""
    stats = dataset.stats or {}
    common = {
        "tokens": int(stats.get("train_tokens") or dataset.tokens),
        "samples": int(stats.get("train_samples") or dataset.samples),
        "base_model": base_model,
        "hyperparameters": hyperparameters,
        "backend": backend,
        "instance_type": instance_type if backend == Backend.SAGEMAKER else None,
        "instance_count": instance_count,
    }
    first = estimate_job(**common)  # the plan (steps, world size) that the lookup needs
    measured = nearest_measured(
        backend=backend,
        instance_type=instance_type.name if backend == Backend.SAGEMAKER and instance_type else "",
        hub_id=base_model.hub_id,
        parameters=int(base_model.parameters),
        method=str(hyperparameters.get("method") or "full"),
        precision=_precision(hyperparameters),
        max_seq_length=first.max_seq_length,
        world_size=first.world_size,
        gradient_checkpointing=bool(hyperparameters.get("gradient_checkpointing")),
    )
    return first if measured is None else estimate_job(**common, measured=measured)


def nearest_measured(
    *,
    backend: str,
    instance_type: str,
    hub_id: str,
    parameters: int,
    method: str,
    precision: str,
    max_seq_length: int,
    world_size: int,
    gradient_checkpointing: bool,
) -> Measured | None:
    """What the nearest past runs reached, or None without any. One query."""
    rows = list(
        RunRecord.objects.filter(backend=backend, instance_type=instance_type)
        .order_by("-finished_at", "-id")
        .values(*RECORD_FIELDS)[:HISTORY_LIMIT]
    )
    if not rows:
        return None
    wanted = {
        "hub_id": hub_id,
        "method": method,
        "precision": precision,
        "max_seq_length": max_seq_length,
        "world_size": world_size,
    }
    for keys, basis in LEVELS:
        matching = [row for row in rows if all(row[k] == wanted[k] for k in keys if k in wanted)]
        if keys == () and matching:
            matching.sort(key=lambda row: abs(math.log(max(1, row["parameters"]) / max(1, parameters))))
            nearest = matching[0]["hub_id"]
            matching = [row for row in matching if row["hub_id"] == nearest]
            basis = basis.format(model=nearest)
        if matching:
            return _measured(matching[:RUNS_USED], basis, backend)
    return None


def _measured(rows: list[dict], basis: str, backend: str) -> Measured:
    device_flops = tuple(
        row["tokens_per_second"]
        * flops_per_token(row["method"], row["gradient_checkpointing"])
        * row["parameters"]
        / (row["world_size"] * (SCALING_EFFICIENCY if row["world_size"] > 1 else 1.0))
        for row in rows
    )
    defaults = DEFAULT_PHASE_SECONDS.get(backend, {})
    phases = {}
    for phase in PHASES:
        if phase == "training":
            continue
        seen = sorted(
            float(row["phase_seconds"][phase]) for row in rows if phase in (row["phase_seconds"] or {})
        )
        if seen:
            high = max(seen) if len(seen) < 10 else statistics.quantiles(seen, n=10, method="inclusive")[-1]
            phases[phase] = (statistics.median(seen), high)
        elif phase in defaults:
            phases[phase] = (float(defaults[phase]), float(defaults[phase]))
    shares = [
        row["billable_seconds"] / row["total_seconds"]
        for row in rows
        if row["billable_seconds"] and row["total_seconds"]
    ]
    per_pass = sorted(row["eval_pass_seconds"] for row in rows if row["eval_passes"])
    count = len(rows)
    return Measured(
        device_flops=device_flops,
        phases=phases,
        basis=f"from {count} {basis if count > 1 else _singular(basis)}",
        billable_share=min(1.0, statistics.median(shares)) if shares else 1.0,
        eval_pass_seconds=(statistics.median(per_pass), _p90(per_pass)) if per_pass else None,
    )


def _singular(basis: str) -> str:
    return basis.replace("runs", "run", 1)


# --- time left --------------------------------------------------------------------------------


def time_left(job: TrainingJob, now: datetime) -> float | None:
    """Seconds until the job completes: what is left of its phase and every phase still to come.

    The training phase's rest is the script's own ETA when it gave one; any other phase's is
    its expected length less the time spent in it. None when nothing is known.
    """
    expected: dict[str, Any] = job.estimated_phases or {}
    phase = job.phase
    if phase not in PHASES or not expected:
        return job.eta_seconds
    position = PHASES.index(phase)
    later = sum(float(expected.get(p) or 0) for p in PHASES[position + 1 :])
    if phase == "training" and job.eta_seconds is not None:
        current = job.eta_seconds
    else:
        spent = (now - job.phase_started_at).total_seconds() if job.phase_started_at else 0.0
        current = max(0.0, float(expected.get(phase) or 0) - spent)
    return current + later


def time_left_display(job: TrainingJob, now: datetime) -> str:
    """`2 min`; `finishing` once a last phase runs past what was expected, never `0 s`."""
    seconds = time_left(job, now)
    if seconds is None:
        return ""
    if seconds < 1:
        return "finishing"
    return format_duration(seconds)


def phase_label(phase: str) -> str:
    return PHASE_LABELS.get(phase, "")
