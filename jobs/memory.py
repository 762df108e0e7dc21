"""Peak accelerator memory per device of a training job, before it runs: the terms it adds up.

A plain function over plain numbers, like jobs/estimate.py, so the new-job form can run it on
every keystroke and show each term. Bytes per device:

- weights, gradients and optimizer states. Full fine-tuning keeps fp32 master weights (4 bytes
  a parameter), fp32 gradients (4) and AdamW's two moments (8): the published 16 bytes a
  parameter of mixed-precision AdamW; under bf16/fp16 autocast the half-precision copies of
  the weights that autocast caches for the backward pass add 2. LoRA keeps the frozen base
  in half precision (2 bytes, 4 in fp32) and trains only the adapters (16 bytes each); QLoRA
  keeps the base's linear layers in 4-bit NF4 (0.5 bytes) with double-quantised constants
  (about 0.127 bits a parameter, Dettmers et al. 2023), its embeddings in bf16;
- DDP (world size > 1) keeps a second copy of the gradients in its all-reduce buckets; FSDP
  (full sharding, for a full fine-tune that does not fit one device under DDP) divides
  weights, gradients and optimizer states by the world size and gathers one layer at a time;
- activations kept for the backward pass: about 34 × sequence × batch × hidden bytes a layer
  in 16-bit (Korthikanti et al. 2022, without the attention-score term that SDPA/flash
  attention never stores), twice that in fp32; with gradient checkpointing only each
  layer's input (2 bytes × sequence × batch × hidden) plus one layer recomputed;
- the logits and their gradient in fp32 (8 bytes a token and vocabulary entry, plus 2 for
  the half-precision logits): large for a big vocabulary;
- the CUDA context and the allocator's slack (a fixed 1 GiB): not in
  torch.cuda.max_memory_allocated, but taken from the GPU's memory all the same.

The shape of a model (hidden size, layers, vocabulary) comes from SHAPES for the catalogue's
models and the scratch recipes; any other model's is derived from its parameter count with
GPT-like proportions (parameters ≈ 12 × layers × hidden², hidden ≈ 100 × layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from training_scripts.hyperparameters import DEFAULTS, SCRATCH_MODELS, is_scratch_model

GIB = 2**30
OVERHEAD_BYTES = 1 * GIB
ADAMW_BYTES = 8  # two fp32 moments
FP32 = 4
HALF = 2
NF4 = 0.5
DOUBLE_QUANT_BYTES = 0.127 / 8  # quantisation constants a parameter, with double quantisation
ACTIVATION_UNITS = 34  # bytes a token a hidden unit a layer, 16-bit (Korthikanti et al.)
LOGIT_BYTES_FP32 = 8  # fp32 logits and their gradient
DEFAULT_VOCAB = 50_257
# LoRA modules a layer (query and value projections, the script's and peft's usual choice for
# most architectures) and their two matrices: 2 modules × r × (hidden + hidden).
LORA_MODULES_PER_LAYER = 2


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    vocab: int
    tied_embeddings: bool = True


# Hidden size, layers (encoder + decoder for T5), vocabulary, tied input/output embeddings:
# from each model's config.json on the Hugging Face Hub.
SHAPES: dict[str, Shape] = {
    **{
        name: Shape(recipe["n_embd"], recipe["n_layer"], recipe["vocab_size"])
        for name, recipe in SCRATCH_MODELS.items()
    },
    "distilgpt2": Shape(768, 6, 50257),
    "gpt2": Shape(768, 12, 50257),
    "gpt2-medium": Shape(1024, 24, 50257),
    "gpt2-large": Shape(1280, 36, 50257),
    "HuggingFaceTB/SmolLM2-135M": Shape(576, 30, 49152),
    "HuggingFaceTB/SmolLM2-360M": Shape(960, 32, 49152),
    "EleutherAI/pythia-160m": Shape(768, 12, 50304, tied_embeddings=False),
    "Qwen/Qwen2.5-0.5B": Shape(896, 24, 151936),
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(896, 24, 151936),
    "meta-llama/Llama-3.2-1B": Shape(2048, 16, 128256),
    "meta-llama/Llama-2-7b-hf": Shape(4096, 32, 32000, tied_embeddings=False),
    "mistralai/Mistral-7B-v0.1": Shape(4096, 32, 32000, tied_embeddings=False),
    "google/flan-t5-small": Shape(512, 16, 32128, tied_embeddings=False),
    "google/flan-t5-base": Shape(768, 24, 32128, tied_embeddings=False),
    "google/flan-t5-large": Shape(1024, 48, 32128, tied_embeddings=False),
}


def shape_of(hub_id: str, parameters: int) -> Shape:
    """The model's shape: known, or derived from its parameter count (see the module's docstring)."""
    known = SHAPES.get(hub_id)
    if known is not None:
        return known
    hidden = max(64, round((100 * max(1, parameters) / 12) ** (1 / 3)))
    return Shape(hidden=hidden, layers=max(1, round(hidden / 100)), vocab=DEFAULT_VOCAB)


@dataclass(frozen=True)
class Setup:
    """What decides the peak: the model, the method and the run's shape on each device."""

    parameters: int
    shape: Shape
    method: str = "full"  # full | lora | qlora
    precision: str = "bf16"  # bf16 (fp16 alike) | fp32: what the device trains in
    batch_size: int = 8  # per device
    gradient_accumulation_steps: int = 1
    seq_length: int = 512
    gradient_checkpointing: bool = False
    lora_r: int = 16
    world_size: int = 1
    fsdp: bool = False  # full sharding of weights, gradients and optimizer states
    sharding: str = "auto"  # what the job asks: auto (FSDP only where DDP does not fit), ddp, fsdp

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.world_size


@dataclass(frozen=True)
class MemoryEstimate:
    setup: Setup
    terms: list[tuple[str, int]] = field(default_factory=list)  # (what, bytes), as the page shows them
    capacity_bytes: int = 0  # one device's memory; 0: not checked

    @property
    def total_bytes(self) -> int:
        return sum(amount for _, amount in self.terms)

    @property
    def allocated_bytes(self) -> int:
        """What torch.cuda.max_memory_allocated would report: all but the context and slack."""
        return sum(amount for name, amount in self.terms if name != OVERHEAD_TERM)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def capacity_gib(self) -> float:
        return self.capacity_bytes / GIB

    @property
    def checked(self) -> bool:
        return self.capacity_bytes > 0

    @property
    def fits(self) -> bool:
        return not self.checked or self.total_bytes <= self.capacity_bytes

    @property
    def strategy(self) -> str:
        if self.setup.world_size <= 1:
            return "one device"
        return (
            f"FSDP over {self.setup.world_size} devices"
            if self.setup.fsdp
            else (f"DDP over {self.setup.world_size} devices")
        )

    def terms_gib(self) -> list[tuple[str, float]]:
        return [(name, amount / GIB) for name, amount in self.terms]


OVERHEAD_TERM = "CUDA context and allocator slack"


def lora_parameters(shape: Shape, r: int) -> int:
    return shape.layers * LORA_MODULES_PER_LAYER * r * 2 * shape.hidden


def embedding_parameters(shape: Shape) -> int:
    return shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)


def peak_memory(setup: Setup, capacity_gib: float = 0.0) -> MemoryEstimate:
    """The peak bytes per device of `setup`, term by term, against `capacity_gib` (0: unchecked)."""
    shape, params = setup.shape, max(0, int(setup.parameters))
    half = setup.precision != "fp32"
    world = max(1, setup.world_size)
    shard = world if setup.fsdp and world > 1 else 1
    terms: list[tuple[str, int]] = []

    if setup.method == "full":
        trainable = params
        terms.append(("weights (fp32)", FP32 * params // shard))
        if half:
            terms.append(("half-precision weight copies (autocast)", HALF * params // shard))
    else:
        trainable = lora_parameters(shape, setup.lora_r)
        if setup.method == "qlora":
            embeddings = min(params, embedding_parameters(shape))
            quantised = params - embeddings
            base = NF4 * quantised + DOUBLE_QUANT_BYTES * quantised + HALF * embeddings
            terms.append(("frozen base weights (4-bit NF4, embeddings bf16)", int(base)))
            # Each layer is dequantised to bf16 while it computes.
            terms.append(("one layer dequantised", int(HALF * quantised / max(1, shape.layers))))
        else:
            terms.append(
                (f"frozen base weights ({'bf16' if half else 'fp32'})", (HALF if half else FP32) * params)
            )
        terms.append(("LoRA adapter weights (fp32)", FP32 * trainable))
    terms.append(("gradients (fp32)", FP32 * trainable // shard))
    terms.append(("optimizer states (AdamW, fp32)", ADAMW_BYTES * trainable // shard))
    if world > 1 and shard == 1:
        terms.append(("DDP gradient buckets", FP32 * trainable))
    if shard > 1:
        per_layer = max(0, params - embedding_parameters(shape)) / max(1, shape.layers)
        terms.append(("FSDP: one layer gathered (and the next prefetched)", int(2 * FP32 * per_layer)))

    tokens = max(1, setup.batch_size) * max(1, setup.seq_length)
    unit = 1 if half else 2  # fp32 activations take twice the 16-bit bytes
    per_layer_full = ACTIVATION_UNITS * tokens * shape.hidden * unit
    if setup.gradient_checkpointing:
        kept = shape.layers * HALF * unit * tokens * shape.hidden + per_layer_full
        terms.append(("activations (checkpointed: layer inputs + one layer)", kept))
    else:
        terms.append((f"activations ({shape.layers} layers)", shape.layers * per_layer_full))
    logit_bytes = LOGIT_BYTES_FP32 + (HALF if half else 0)
    terms.append(("logits and their gradient", logit_bytes * tokens * shape.vocab))
    terms.append((OVERHEAD_TERM, OVERHEAD_BYTES))
    return MemoryEstimate(setup=setup, terms=terms, capacity_bytes=int(capacity_gib * GIB))


def check_setup(setup: Setup, capacity_gib: float) -> MemoryEstimate:
    """peak_memory as the engine will train: DDP, or FSDP for a full fine-tune over several devices
    that asks for it, or that does not fit one device under DDP and leaves it to ``sharding=auto``."""
    plain = peak_memory(replace(setup, fsdp=False), capacity_gib)
    if setup.method != "full" or setup.world_size <= 1 or setup.sharding == "ddp":
        return plain
    if setup.sharding == "fsdp" or not plain.fits:
        return peak_memory(replace(setup, fsdp=True), capacity_gib)
    return plain


def sharding_for(base_model: Any, hyperparameters: dict, capacity_gib: float, world_size: int) -> str:
    """What finetune.py is told: the sharding asked for, or for ``auto`` the one check_setup picked
    (fsdp where a full fine-tune fits the devices only sharded, else ddp). The script run by hand
    takes auto as ddp: only the platform knows the devices' memory before the run."""
    asked = hyperparameters.get("sharding") or DEFAULTS.get("sharding", "auto")
    if asked != "auto":
        return asked
    setup = setup_for(base_model, hyperparameters, world_size=world_size)
    return "fsdp" if check_setup(setup, capacity_gib).setup.fsdp else "ddp"


def with_sharding(hyperparameters: dict, base_model: Any, capacity_gib: float, world_size: int) -> dict:
    """The job's hyperparameters as the script gets them: ``sharding`` resolved (sharding_for)."""
    if "sharding" not in DEFAULTS:
        return hyperparameters
    return {
        **hyperparameters,
        "sharding": sharding_for(base_model, hyperparameters, capacity_gib, world_size),
    }


@dataclass(frozen=True)
class Remedy:
    """A change that makes the job fit, with what it would then need."""

    change: str
    fields: dict
    estimate: MemoryEstimate

    def describe(self) -> str:
        return f"{self.change} (about {self.estimate.total_gib:.1f} GiB)"


def smaller_batches(setup: Setup) -> list[tuple[int, int]]:
    """(batch, accumulation) pairs with the same examples a step, largest batch first."""
    pairs = []
    batch = setup.batch_size // 2
    per_step = setup.batch_size * setup.gradient_accumulation_steps
    while batch >= 1:
        pairs.append((batch, math.ceil(per_step / batch)))
        batch //= 2
    return pairs


def config_remedies(setup: Setup, capacity_gib: float, *, qlora_possible: bool) -> list[Remedy]:
    """Changes of the run itself (not the hardware) that fit `capacity_gib`; each tried alone."""
    remedies: list[Remedy] = []
    # the same training with its state sharded: the smallest change for a full fine-tune
    if setup.sharding == "ddp" and setup.method == "full" and setup.world_size > 1:
        found = check_setup(replace(setup, sharding="fsdp"), capacity_gib)
        if found.fits:
            remedies.append(Remedy("sharding fsdp (or auto)", {"sharding": "fsdp"}, found))
    methods = [] if setup.method != "full" else ["lora"]
    if qlora_possible and setup.method in ("full", "lora"):
        methods.append("qlora")
    for method in methods:
        found = check_setup(replace(setup, method=method), capacity_gib)
        if found.fits:
            label = "LoRA" if method == "lora" else "QLoRA (4-bit base)"
            remedies.append(Remedy(f"method {label}", {"method": method}, found))
    if not setup.gradient_checkpointing:
        found = check_setup(replace(setup, gradient_checkpointing=True), capacity_gib)
        if found.fits:
            remedies.append(Remedy("gradient checkpointing on", {"gradient_checkpointing": True}, found))
    for batch, accumulation in smaller_batches(setup):
        found = check_setup(
            replace(setup, batch_size=batch, gradient_accumulation_steps=accumulation), capacity_gib
        )
        if found.fits:
            remedies.append(
                Remedy(
                    f"batch_size {batch} with gradient_accumulation_steps {accumulation}",
                    {"batch_size": batch, "gradient_accumulation_steps": accumulation},
                    found,
                )
            )
            break
    return remedies


def setup_for(base_model: Any, hyperparameters: dict, *, world_size: int = 1) -> Setup:
    """The Setup of a job: a catalogue model (parameters, hub_id, context_length) and validated values."""
    hp = {**DEFAULTS, **{k: v for k, v in hyperparameters.items() if v is not None}}
    seq = int(hp["max_seq_length"])
    if not is_scratch_model(base_model.hub_id) and base_model.context_length:
        seq = min(seq, int(base_model.context_length))  # finetune.py cuts it to what the model takes
    return Setup(
        parameters=int(base_model.parameters),
        shape=shape_of(base_model.hub_id, int(base_model.parameters)),
        method=str(hp["method"]),
        precision="fp32" if hp.get("precision") == "fp32" else "bf16",
        batch_size=int(hp["batch_size"]),
        gradient_accumulation_steps=int(hp["gradient_accumulation_steps"]),
        seq_length=seq,
        gradient_checkpointing=bool(hp["gradient_checkpointing"]),
        lora_r=int(hp["lora_r"]),
        world_size=max(1, int(world_size)),
        sharding=str(hp.get("sharding") or "auto"),
    )


MAX_INSTANCE_COUNT = 8


@dataclass(frozen=True)
class HardwareRemedy:
    instance_type: Any
    count: int
    estimate: MemoryEstimate

    @property
    def hourly_usd(self) -> float:
        return float(self.instance_type.price_per_hour_usd) * self.count

    def describe(self) -> str:
        where = self.instance_type.name if self.count == 1 else f"{self.count} × {self.instance_type.name}"
        return (
            f"{where} ({self.instance_type.gpu_count} × {self.instance_type.gpu_memory_gib:g} GiB "
            f"{self.instance_type.gpu_type or 'GPU'} each, {self.estimate.strategy}, "
            f"about {self.estimate.total_gib:.1f} GiB per GPU)"
        )


def hardware_remedies(
    setup: Setup, instance_types, *, chosen: Any = None, limit: int = 3
) -> list[HardwareRemedy]:
    """The cheapest GPU instance types (and counts up to 8) on which `setup` fits, the chosen one excluded."""
    found = []
    for instance_type in instance_types:
        gpus = int(instance_type.gpu_count or 0)
        memory = float(instance_type.gpu_memory_gib or 0)
        if not gpus or memory <= 0:
            continue
        for count in range(1, MAX_INSTANCE_COUNT + 1):
            if chosen is not None and instance_type.pk == getattr(chosen, "pk", None) and count == 1:
                continue
            estimate = check_setup(replace(setup, world_size=gpus * count), memory)
            if estimate.fits:
                found.append(HardwareRemedy(instance_type, count, estimate))
                break
            if setup.method != "full":
                break  # only sharding a full fine-tune lowers each device's share
    found.sort(key=lambda remedy: remedy.hourly_usd)
    return found[:limit]


def main(argv: list[str] | None = None) -> None:
    """`python -m jobs.memory --parameters 1.1e9 --hidden 2048 --layers 22 --vocab 32000 --method lora`:
    the figure a benchmark (bench/gpu_check.sh) sets beside torch.cuda.max_memory_allocated."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--parameters", type=float, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--untied", action="store_true", help="separate input and output embeddings")
    parser.add_argument("--method", choices=("full", "lora", "qlora"), default="full")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_length", type=int, default=512)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--world_size", type=int, default=1)
    parser.add_argument("--fsdp", action="store_true")
    args = parser.parse_args(argv)
    shape = Shape(args.hidden, args.layers, args.vocab, tied_embeddings=not args.untied)
    found = peak_memory(
        Setup(
            parameters=int(args.parameters),
            shape=shape,
            method=args.method,
            precision=args.precision,
            batch_size=args.batch_size,
            seq_length=args.seq_length,
            gradient_checkpointing=args.gradient_checkpointing,
            lora_r=args.lora_r,
            world_size=args.world_size,
            fsdp=args.fsdp,
        )
    )
    for name, gib in found.terms_gib():
        print(f"{name:55} {gib:8.3f} GiB")
    print(f"{'allocated (as torch.cuda.max_memory_allocated)':55} {found.allocated_bytes / GIB:8.3f} GiB")
    print(f"{'total per device':55} {found.total_gib:8.3f} GiB")


if __name__ == "__main__":
    main()
