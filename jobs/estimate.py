"""How long a training job will take, and what it will cost, before it runs.

A plain function over plain numbers, so it is quick to test and cheap enough to
run on every keystroke of the new-job form (jobs.history feeds it what past runs
measured; this module makes no query):

- steps follow finetune.py's own schedule (schedule.py): packed causal-LM data is
  cut into ``max_seq_length`` blocks (tokens ÷ length), anything else is one
  example per sample; ``ceil(examples ÷ batch_size)`` micro-batches make an
  epoch, ``gradient_accumulation_steps × world size`` of them make a step (every
  device takes its own micro-batch: the effective batch is per-device batch ×
  accumulation × world size), and a non-zero ``max_steps`` *is* the number of steps;
- compute is ``6 × parameters × trained tokens`` for full fine-tuning (forward
  2, backward 4), ``4 ×`` for LoRA and QLoRA (the frozen weights get no weight
  gradients), plus one more forward (``2 ×``) with gradient checkpointing;
- with ``measured`` (the nearest runs of this platform, jobs.history) the training
  phase takes that compute ÷ the FLOP/s those runs reached, scaled to this job's
  world size, and the other phases take what they took there; the range is the
  median to the 90th percentile over those runs;
- without it (no run to learn from yet), compute ÷ (throughput × utilisation):
  ``LOCAL_TRAINING_TFLOPS`` for this machine, an instance's sustained
  ``bf16_tflops`` (GPU) or ``fp32_tflops`` (CPU) on SageMaker, of all its
  devices × instance count × SCALING_EFFICIENCY when more than one; the other
  phases take DEFAULT_PHASE_SECONDS, and the slow end is FALLBACK_SLOW_FACTOR ×;
- cost is ``seconds × billable share ÷ 3600 × price per hour × instance count``
  (billable share from past runs on that instance type, else 1); this machine
  costs nothing.

How LOCAL_TRAINING_TFLOPS was measured (default 0.03): real finetune.py runs on
3,000 synthetic text samples on the development machine (2 vCPU AMD EPYC with
AVX-512, torch on CPU in fp32), taking ``6 × total_parameters`` (its start
event) ``× tokens_per_second`` (its done event, training steps only):
scratch:small-gpt2 (10.9M parameters), 256-token sequences, batch 8, two
threads as the worker runs it: 405 tokens/s = 0.027 TFLOP/s, best of three
while other work shared the machine (the process got 0.84 of its 2 CPUs); one
thread reached 0.073 per CPU it was given, scratch:tiny-gpt2 (0.48M) 0.041.
Set LOCAL_TRAINING_TFLOPS to what the same run gives on your worker.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from django.conf import settings

from training_scripts.hyperparameters import DEFAULTS, is_scratch_model

# Share of an accelerator's sustained peak that a single-device fine-tuning run
# reaches (model FLOPs utilisation). LOCAL_TRAINING_TFLOPS is measured with
# finetune.py itself, so it needs no such discount.
SAGEMAKER_UTILISATION = 0.35
LOCAL_UTILISATION = 1.0
# What each device keeps of its own speed when several train together (gradient
# all-reduce; DDP typically reaches 0.85-0.95 within an instance).
SCALING_EFFICIENCY = 0.9
# The phases of a run, in order (finetune.py's phase events, with the platform's own
# first and last: the worker or instance starting, the model's upload to storage).
PHASES = (
    "starting",
    "preparing_data",
    "loading_model",
    "training",
    "evaluating",
    "saving",
    "generating_samples",
    "uploading",
)
# Seconds of the phases other than training before any run measured them: locally the
# worker starts Python and imports torch (14 to 31 s measured on the shared 2-core
# development machine, bench/bench_estimator.py), the scratch models build in a second; a
# SageMaker job waits for its instance and the training image (typically 3 to 6 minutes).
DEFAULT_PHASE_SECONDS = {
    "local": {
        "starting": 20,
        "preparing_data": 1,
        "loading_model": 1,
        "evaluating": 4,
        "saving": 1,
        "generating_samples": 5,
        "uploading": 1,
    },
    "sagemaker": {
        "starting": 240,
        "preparing_data": 10,
        "loading_model": 30,
        "evaluating": 20,
        "saving": 20,
        "generating_samples": 20,
        "uploading": 30,
    },
}
STARTUP_SECONDS = {backend: sum(phases.values()) for backend, phases in DEFAULT_PHASE_SECONDS.items()}
# The slow end of an estimate from the model's size alone (no run measured it yet).
FALLBACK_SLOW_FACTOR = 1.5
FLOPS_PER_PARAMETER_TOKEN = {"full": 6, "lora": 4, "qlora": 4}
CHECKPOINTING_EXTRA = 2


class ModelLike(Protocol):
    parameters: int
    context_length: int
    architecture: str
    hub_id: str


@dataclass(frozen=True)
class Measured:
    """What the nearest past runs reached (jobs.history): the estimate's basis when there are any."""

    # FLOP/s of one device (already divided by the run's world size and efficiency), per run.
    device_flops: tuple[float, ...]
    # {phase: (typical, slow) seconds} of the phases other than training.
    phases: dict[str, tuple[float, float]]
    basis: str  # "from 3 similar runs"
    billable_share: float = 1.0  # SageMaker: billable ÷ wall seconds of those runs
    # (typical, slow) seconds of one pass over the evaluation data; None where none evaluated.
    eval_pass_seconds: tuple[float, float] | None = None


@dataclass(frozen=True)
class Estimate:
    steps: int
    train_tokens: int
    seconds: int  # typical: leaving the queue to completed
    cost_usd: Decimal | None  # None: the backend costs nothing
    steps_per_epoch: int = 0
    max_seq_length: int = 0
    tflops: float = 0.0  # effective, all devices together
    slow_seconds: int = 0  # the slow end of the range
    basis: str = ""
    phases: dict[str, int] = field(default_factory=dict)  # typical seconds per phase
    world_size: int = 1
    effective_batch: int = 0  # sequences per optimizer step over all devices

    @property
    def duration(self) -> str:
        return format_duration(self.seconds)

    @property
    def slow_duration(self) -> str:
        return format_duration(self.slow_seconds)

    @property
    def range_display(self) -> str:
        """`2 min to 3 min`, or one figure when both ends read the same."""
        typical, slow = self.duration, self.slow_duration
        return typical if typical == slow else f"{typical} to {slow}"

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch if self.steps_per_epoch else 0.0


def estimate_job(
    *,
    tokens: int,
    samples: int,
    base_model: ModelLike,
    hyperparameters: dict[str, Any],
    backend: str,
    instance_type: Any = None,
    instance_count: int = 1,
    measured: Measured | None = None,
) -> Estimate:
    """Steps, trained tokens, seconds (a range) and cost of one job, from validated `hyperparameters`."""
    hp = {**DEFAULTS, **{k: v for k, v in hyperparameters.items() if v is not None}}
    tokens, samples = max(0, int(tokens)), max(0, int(samples))
    world = world_size(backend, instance_type, instance_count)
    seq = int(hp["max_seq_length"])
    causal = base_model.architecture != "seq2seq"
    if causal and not is_scratch_model(base_model.hub_id) and base_model.context_length:
        seq = min(seq, int(base_model.context_length))  # finetune.py cuts it to what the model supports
    if causal and hp["packing"]:
        examples = max(1, math.ceil(tokens / seq))
        tokens_per_epoch = tokens
    else:
        examples = max(1, samples)
        tokens_per_epoch = min(tokens, samples * seq)  # longer samples are truncated
    micro_per_epoch = math.ceil(examples / int(hp["batch_size"]))
    micro_per_step = int(hp["gradient_accumulation_steps"]) * world
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / micro_per_step))
    steps = int(hp["max_steps"]) or max(1, math.ceil(float(hp["epochs"]) * steps_per_epoch))
    train_tokens = round(steps * tokens_per_epoch / steps_per_epoch)

    flops = (
        flops_per_token(hp["method"], hp["gradient_checkpointing"])
        * int(base_model.parameters)
        * train_tokens
    )
    scale = world * (SCALING_EFFICIENCY if world > 1 else 1.0)
    if measured is not None and measured.device_flops:
        per_run = sorted(flops / (device * scale) for device in measured.device_flops if device > 0)
        train_typical, train_slow = _median(per_run), _p90(per_run)
        if measured.eval_pass_seconds:  # the evaluations during training (the last one is a phase)
            within = evaluations_within_training(steps, int(hp["eval_steps"]))
            train_typical += within * measured.eval_pass_seconds[0]
            train_slow += within * measured.eval_pass_seconds[1]
        typical = {phase: low for phase, (low, _high) in measured.phases.items()}
        slow = sum(high for _low, high in measured.phases.values()) + train_slow
        tflops = flops / train_typical / 1e12 if train_typical else 0.0
        basis, billable_share = measured.basis, measured.billable_share
    else:
        device_tflops, utilisation = _throughput(backend, instance_type)
        tflops = device_tflops * utilisation * scale
        train_typical = flops / (tflops * 1e12) if tflops > 0 else 0.0
        typical = dict(DEFAULT_PHASE_SECONDS.get(backend, {}))
        slow = (train_typical + sum(typical.values())) * FALLBACK_SLOW_FACTOR
        basis, billable_share = "from the model's size", 1.0
    unrounded = {phase: float(typical.get(phase, 0)) for phase in PHASES if phase != "training"}
    unrounded["training"] = train_typical
    # Rounded once, in all: eight phases rounded up each added seconds to a short job.
    seconds = math.ceil(sum(unrounded.values()))
    phases = {phase: round(unrounded[phase]) for phase in PHASES}
    return Estimate(
        steps=steps,
        train_tokens=train_tokens,
        seconds=seconds,
        cost_usd=_cost(seconds * billable_share, backend, instance_type, instance_count),
        steps_per_epoch=steps_per_epoch,
        max_seq_length=seq,
        tflops=tflops,
        slow_seconds=max(seconds, math.ceil(slow)),
        basis=basis,
        phases=phases,
        world_size=world,
        effective_batch=int(hp["batch_size"]) * micro_per_step,
    )


def evaluations_within_training(steps: int, eval_steps: int) -> int:
    """finetune.py's evaluations before the last step (schedule.py: about five per run by default)."""
    every = eval_steps or max(1, math.ceil(steps / 5))
    return max(0, (steps - 1) // every)


def flops_per_token(method: str, gradient_checkpointing: bool) -> int:
    """Training FLOPs per parameter and token."""
    return FLOPS_PER_PARAMETER_TOKEN.get(method, 6) + (CHECKPOINTING_EXTRA if gradient_checkpointing else 0)


def world_size(backend: str, instance_type: Any, instance_count: int = 1) -> int:
    """Devices that train together: GPUs per instance (or one CPU) × instances; locally, the GPUs."""
    if backend == "sagemaker" and instance_type is not None:
        return max(1, int(getattr(instance_type, "gpu_count", 0) or 0)) * max(1, int(instance_count or 1))
    return max(1, int(getattr(settings, "LOCAL_TRAINING_GPUS", 0) or 0))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _p90(values: list[float]) -> float:
    """The 90th percentile (the largest of fewer than ten)."""
    if len(values) < 10:
        return max(values, default=0.0)
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def _throughput(backend: str, instance_type: Any) -> tuple[float, float]:
    """(TFLOP/s of one device, utilisation)."""
    if backend == "sagemaker" and instance_type is not None:
        gpus = int(getattr(instance_type, "gpu_count", 0) or 0)
        if gpus and getattr(instance_type, "bf16_tflops", 0):
            return float(instance_type.bf16_tflops) / gpus, SAGEMAKER_UTILISATION
        return float(getattr(instance_type, "fp32_tflops", 0) or 0), SAGEMAKER_UTILISATION
    return float(settings.LOCAL_TRAINING_TFLOPS), LOCAL_UTILISATION


def _cost(seconds: float, backend: str, instance_type: Any, count: int) -> Decimal | None:
    if backend != "sagemaker" or instance_type is None:
        return None
    price = Decimal(str(instance_type.price_per_hour_usd))
    cost = Decimal(math.ceil(seconds)) / Decimal(3600) * price * max(1, int(count))
    return cost.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def format_duration(seconds: float | int | None) -> str:
    """`45 s`, `12 min`, `1 h 05 min`, `2 d 3 h`; an empty string for None."""
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if minutes < 10 and secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
