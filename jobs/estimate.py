"""How long a training job will take, and what it will cost, before it runs.

A plain function over plain numbers, so it is quick to test and cheap enough to
run on every keystroke of the new-job form:

- steps follow finetune.py's own schedule (schedule.py): packed causal-LM data is
  cut into ``max_seq_length`` blocks (tokens ÷ length), anything else is one
  example per sample; ``ceil(examples ÷ batch_size)`` micro-batches make an
  epoch, ``gradient_accumulation_steps`` of them make a step, and a non-zero
  ``max_steps`` *is* the number of steps (the script loops over the data
  again if it must);
- compute is ``6 × parameters × trained tokens`` for full fine-tuning (forward
  2, backward 4), ``4 ×`` for LoRA (the frozen weights get no weight
  gradients), plus one more forward (``2 ×``) with gradient checkpointing;
- time is that compute ÷ (throughput × utilisation) + the start-up of the
  backend: ``LOCAL_TRAINING_TFLOPS`` for this machine (what finetune.py
  actually reached here, so utilisation 1), an instance's sustained
  ``bf16_tflops`` (GPU) or ``fp32_tflops`` (CPU) on SageMaker, of one device
  only, since finetune.py trains on one device;
- the time is then multiplied by ``calibration``: the median of actual ÷ estimated
  duration of recent completed jobs on the same instance family (or this
  machine), from ``jobs.pricing.calibration_factor``; 1 until there are a few;
- cost is ``seconds ÷ 3600 × price per hour × instance count``; this machine
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
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from django.conf import settings

from training_scripts.hyperparameters import DEFAULTS, is_scratch_model

# Share of an accelerator's sustained peak that a single-device fine-tuning run
# reaches (model FLOPs utilisation). LOCAL_TRAINING_TFLOPS is measured with
# finetune.py itself, so it needs no such discount.
SAGEMAKER_UTILISATION = 0.35
LOCAL_UTILISATION = 1.0
# Before the first step: the local worker lays out the data, starts Python and
# builds or loads the model (about 5 s measured for the scratch models); a
# SageMaker job also waits for its instance and the training image (typically
# 3 to 6 minutes) and uploads the model at the end.
STARTUP_SECONDS = {"local": 10, "sagemaker": 300}
FLOPS_PER_PARAMETER_TOKEN = {"full": 6, "lora": 4}
CHECKPOINTING_EXTRA = 2


class ModelLike(Protocol):
    parameters: int
    context_length: int
    architecture: str
    hub_id: str


@dataclass(frozen=True)
class Estimate:
    steps: int
    train_tokens: int
    seconds: int
    cost_usd: Decimal | None  # None: the backend costs nothing
    steps_per_epoch: int = 0
    max_seq_length: int = 0
    tflops: float = 0.0
    calibration: float = 1.0

    @property
    def duration(self) -> str:
        return format_duration(self.seconds)

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
    calibration: float = 1.0,
) -> Estimate:
    """Steps, trained tokens, seconds and cost of one job; `hyperparameters` are validated values."""
    hp = {**DEFAULTS, **{k: v for k, v in hyperparameters.items() if v is not None}}
    tokens, samples = max(0, int(tokens)), max(0, int(samples))
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
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / int(hp["gradient_accumulation_steps"])))
    steps = int(hp["max_steps"]) or max(1, math.ceil(float(hp["epochs"]) * steps_per_epoch))
    train_tokens = round(steps * tokens_per_epoch / steps_per_epoch)

    per_token = FLOPS_PER_PARAMETER_TOKEN.get(hp["method"], 6)
    if hp["gradient_checkpointing"]:
        per_token += CHECKPOINTING_EXTRA
    flops = per_token * int(base_model.parameters) * train_tokens
    tflops, utilisation = _throughput(backend, instance_type)
    compute_seconds = flops / (tflops * 1e12 * utilisation) if tflops > 0 else 0.0
    seconds = math.ceil((compute_seconds + STARTUP_SECONDS.get(backend, 0)) * calibration)
    return Estimate(
        steps=steps,
        train_tokens=train_tokens,
        seconds=seconds,
        cost_usd=_cost(seconds, backend, instance_type, instance_count),
        steps_per_epoch=steps_per_epoch,
        max_seq_length=seq,
        tflops=tflops * utilisation,
        calibration=calibration,
    )


def _throughput(backend: str, instance_type: Any) -> tuple[float, float]:
    """(TFLOP/s, utilisation) of the one device finetune.py trains on."""
    if backend == "sagemaker" and instance_type is not None:
        gpus = int(getattr(instance_type, "gpu_count", 0) or 0)
        if gpus and getattr(instance_type, "bf16_tflops", 0):
            return float(instance_type.bf16_tflops) / gpus, SAGEMAKER_UTILISATION
        return float(getattr(instance_type, "fp32_tflops", 0) or 0), SAGEMAKER_UTILISATION
    return float(settings.LOCAL_TRAINING_TFLOPS), LOCAL_UTILISATION


def _cost(seconds: int, backend: str, instance_type: Any, count: int) -> Decimal | None:
    if backend != "sagemaker" or instance_type is None:
        return None
    price = Decimal(str(instance_type.price_per_hour_usd))
    cost = Decimal(seconds) / Decimal(3600) * price * max(1, int(count))
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
