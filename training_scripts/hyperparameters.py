"""Hyperparameter spec and validation shared by the training script and the web form.

Standard library only: the Django web process imports this module (as
``training_scripts.hyperparameters``) so the launch form validates with exactly
the rules the training script applies (``finetune.py`` imports it as
``hyperparameters``).

Public API:

- ``HYPERPARAMETERS``: name -> :class:`Param` (type, default, bounds, choices, help), in form order.
- ``DEFAULTS``: name -> default value.
- ``SCRATCH_MODELS``: the ``scratch:...`` base models built from nothing (no download).
- ``validate_hyperparameters(values) -> (clean, errors)``.
- ``format_errors(errors) -> str``.
- ``describe_value(value)`` and ``shorten(text)``: a refused value as a message quotes it, never whole.
- ``to_cli_args(clean) -> list[str]`` and ``to_sagemaker_hyperparameters(clean) -> dict[str, str]``.
- ``decode_value(value)``: how one CLI / SageMaker value is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULTS",
    "DEFAULT_LEARNING_RATES",
    "HYPERPARAMETERS",
    "LR_SCHEDULERS",
    "ADAPTER_METHODS",
    "METHODS",
    "PRECISIONS",
    "SHARDINGS",
    "SCRATCH_MODELS",
    "Param",
    "decode_value",
    "describe_value",
    "format_errors",
    "is_scratch_model",
    "shorten",
    "to_cli_args",
    "to_sagemaker_hyperparameters",
    "validate_hyperparameters",
]

METHODS = ("full", "lora", "qlora")
ADAPTER_METHODS = ("lora", "qlora")  # methods that train a LoRA adapter (saved apart or merged)
PRECISIONS = ("auto", "fp32", "bf16")
SHARDINGS = ("auto", "ddp", "fsdp")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)

# Models trained from nothing: a byte-level BPE tokenizer learnt on the training
# data plus a small randomly initialised GPT-2. Needs no download; used by the
# tests and as the offline default.
SCRATCH_MODELS: dict[str, dict[str, int]] = {
    "scratch:tiny-gpt2": {"vocab_size": 3000, "n_layer": 2, "n_embd": 128, "n_head": 4},
    "scratch:small-gpt2": {"vocab_size": 8000, "n_layer": 6, "n_embd": 384, "n_head": 6},
}

# Used when learning_rate is left empty.
DEFAULT_LEARNING_RATES = {"scratch": 1e-3, "lora": 2e-4, "qlora": 2e-4, "full": 5e-5}


@dataclass(frozen=True)
class Param:
    """One hyperparameter. ``type`` is one of str, int, float, bool, choice."""

    name: str
    type: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    label: str = ""  # in words, for the form (the name is shown beside it as a hint); see LABELS
    unit: str = ""  # what a number counts, e.g. "tokens"

    @property
    def title(self) -> str:
        """The form's label: words, with the unit: ``Sequence length (tokens)``."""
        label, unit = (self.label, self.unit) if self.label else LABELS.get(self.name, ("", ""))
        label = label or self.name.replace("_", " ").capitalize()
        return f"{label} ({unit})" if unit else label

    def describe_range(self) -> str:
        if self.type == "choice":
            return "one of " + ", ".join(self.choices or ())
        if self.type == "bool":
            return "true or false"
        kind = "an integer" if self.type == "int" else "a number"
        low = "greater than" if self.min_exclusive else "at least"
        if self.min is not None and self.max is not None:
            if self.min_exclusive:
                return f"{kind} greater than {_num(self.min)} and at most {_num(self.max)}"
            return f"{kind} between {_num(self.min)} and {_num(self.max)}"
        if self.min is not None:
            return f"{kind} {low} {_num(self.min)}"
        if self.max is not None:
            return f"{kind} at most {_num(self.max)}"
        return kind


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


_SPEC: tuple[Param, ...] = (
    Param(
        "base_model",
        "str",
        "scratch:tiny-gpt2",
        "Hugging Face Hub id (e.g. gpt2, Qwen/Qwen2.5-0.5B, google/flan-t5-small), a local folder, "
        "or scratch:tiny-gpt2 to train a tiny GPT-2 and tokenizer from nothing.",
        max_length=500,
    ),
    Param(
        "method",
        "choice",
        "full",
        "full fine-tuning, LoRA adapters (peft), or QLoRA: LoRA on the base model loaded in 4-bit NF4 "
        "(bitsandbytes; causal models).",
        choices=METHODS,
    ),
    Param(
        "precision",
        "choice",
        "auto",
        "auto: bf16 autocast where the device computes bf16 natively (recent GPUs, CPUs with avx512_bf16 "
        "or AMX), fp16 on older GPUs, else fp32; fp32 forces full precision; bf16 forces bf16 autocast.",
        choices=PRECISIONS,
    ),
    Param(
        "sharding",
        "choice",
        "auto",
        "How a full fine-tune spreads over several GPUs: ddp keeps the whole model, gradients and optimizer "
        "states on each; fsdp shards all three over the GPUs (PyTorch FSDP), for a model whose training "
        "state does not fit one. auto: the platform's memory check picks fsdp where ddp would not fit "
        "(the script run by hand takes ddp). LoRA and QLoRA always use ddp; one device: ignored.",
        choices=SHARDINGS,
    ),
    Param("epochs", "float", 3.0, "Passes over the training data.", min=0, max=1000, min_exclusive=True),
    Param("max_steps", "int", 0, "Stop after this many optimizer steps (0 = no cap).", min=0, max=10_000_000),
    Param(
        "learning_rate",
        "float",
        None,
        "Peak learning rate. Empty = 1e-3 for scratch models, 2e-4 for LoRA, 5e-5 for full fine-tuning.",
        min=0,
        max=1,
        min_exclusive=True,
    ),
    Param("batch_size", "int", 8, "Sequences per micro-batch.", min=1, max=1024),
    Param(
        "gradient_accumulation_steps",
        "int",
        1,
        "Micro-batches per optimizer step.",
        min=1,
        max=1024,
    ),
    Param("max_seq_length", "int", 512, "Tokens per training sequence.", min=16, max=131072),
    Param("warmup_ratio", "float", 0.03, "Fraction of steps spent warming up.", min=0, max=0.9),
    Param("weight_decay", "float", 0.0, "AdamW weight decay.", min=0, max=1),
    Param("lr_scheduler", "choice", "linear", "Learning-rate schedule.", choices=LR_SCHEDULERS),
    Param("seed", "int", 42, "Random seed.", min=0, max=2**31 - 1),
    Param(
        "packing",
        "bool",
        True,
        "Pack causal-LM samples into max_seq_length blocks (no compute spent on padding).",
    ),
    Param("lora_r", "int", 16, "LoRA rank.", min=1, max=1024),
    Param("lora_alpha", "int", 32, "LoRA scaling alpha.", min=1, max=4096),
    Param("lora_dropout", "float", 0.05, "LoRA dropout.", min=0, max=0.9),
    Param("gradient_checkpointing", "bool", False, "Trade compute for memory."),
    Param("merge_adapter", "bool", True, "Merge the LoRA adapter into the saved model (else save it apart)."),
    Param("max_grad_norm", "float", 1.0, "Gradient clipping norm (0 = no clipping).", min=0, max=1e6),
    Param(
        "eval_steps",
        "int",
        0,
        "Evaluate every N steps (0 = about 5 times per run); always once at the end.",
        min=0,
        max=10_000_000,
    ),
    Param(
        "logging_steps",
        "int",
        0,
        "Emit a progress event every N steps (0 = about 100 per run), and at least every 2 s.",
        min=0,
        max=10_000_000,
    ),
    Param(
        "save_steps",
        "int",
        0,
        "Save a checkpoint every N steps (0 = only the final model).",
        min=0,
        max=10_000_000,
    ),
    Param(
        "checkpoint_minutes",
        "float",
        0.0,
        "Also save a checkpoint once this many minutes went by since the last (0 = off); "
        "a stopped run always leaves one.",
        min=0,
        max=10080,
    ),
    Param(
        "validation_split",
        "float",
        0.05,
        "Fraction of training samples held out for evaluation when no validation data is given "
        "(only with 20 samples or more).",
        min=0,
        max=0.5,
    ),
    Param(
        "num_sample_generations",
        "int",
        4,
        "Sample generations written to samples.json at the end.",
        min=0,
        max=64,
    ),
    Param("sample_max_new_tokens", "int", 64, "New tokens per sample generation.", min=1, max=4096),
    Param(
        "eval_samples",
        "int",
        50,
        "Held-out validation prompts that the tuned and the base model answer at the end (greedy, "
        "sample_max_new_tokens each), scored against the reference: exact match, token F1, ROUGE-L "
        "(0 = off).",
        min=0,
        max=1000,
    ),
)

# The form's words and units for the parameters above (a new Param may set label= and unit= itself).
LABELS: dict[str, tuple[str, str]] = {
    "base_model": ("Base model", ""),
    "method": ("Method", ""),
    "epochs": ("Epochs", "passes over the data"),
    "max_steps": ("Maximum steps", "optimizer steps, 0 = no cap"),
    "learning_rate": ("Learning rate", "peak"),
    "batch_size": ("Batch size", "sequences per micro-batch"),
    "gradient_accumulation_steps": ("Gradient accumulation", "micro-batches per step"),
    "max_seq_length": ("Sequence length", "tokens"),
    "warmup_ratio": ("Warm-up", "fraction of the steps"),
    "weight_decay": ("Weight decay", "AdamW"),
    "lr_scheduler": ("Learning-rate schedule", ""),
    "seed": ("Random seed", ""),
    "packing": ("Pack samples together", ""),
    "lora_r": ("LoRA rank", ""),
    "lora_alpha": ("LoRA scaling", "alpha"),
    "lora_dropout": ("LoRA dropout", "probability"),
    "gradient_checkpointing": ("Gradient checkpointing", ""),
    "sharding": ("Spread over several GPUs", "ddp or fsdp"),
    "merge_adapter": ("Merge the adapter into the model", ""),
    "max_grad_norm": ("Gradient clipping", "norm, 0 = off"),
    "eval_steps": ("Evaluate every", "steps"),
    "logging_steps": ("Report progress every", "steps"),
    "save_steps": ("Save a checkpoint every", "steps"),
    "validation_split": ("Held out for evaluation", "fraction of the samples"),
    "num_sample_generations": ("Sample generations", "samples"),
    "sample_max_new_tokens": ("Sample length", "new tokens"),
}

HYPERPARAMETERS: dict[str, Param] = {p.name: p for p in _SPEC}
DEFAULTS: dict[str, Any] = {p.name: p.default for p in _SPEC}

# A refused value longer than this is quoted by its first characters and its length only:
# a message must never send a megabyte back (the web forms quote with these too).
QUOTED_CHARACTERS = 50


def shorten(text: str) -> str:
    """``text`` as is when short, else ``"9999… (1,048,576 characters)"``."""
    if len(text) <= QUOTED_CHARACTERS:
        return text
    return f"{text[:QUOTED_CHARACTERS]}… ({len(text):,} characters)"


def describe_value(value: Any) -> str:
    """A refused value as a message quotes it: ``'abc'`` in full, ``'9999…' (1,048,576 characters)``."""
    if isinstance(value, str) and len(value) > QUOTED_CHARACTERS:
        return f"{value[:QUOTED_CHARACTERS] + '…'!r} ({len(value):,} characters)"
    try:
        return shorten(repr(value))
    except ValueError:  # an integer past Python's int-to-string digit limit
        return f"an integer of about {int(value.bit_length() * math.log10(2)):,} digits"


_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def is_scratch_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith("scratch:")


def decode_value(value: Any) -> Any:
    """Read one CLI / SageMaker value: JSON when it parses (``5e-05``, ``true``, ``"gpt2"``), else as is.

    SageMaker JSON-encodes every hyperparameter, strings included, so ``"gpt2"`` (with the
    quotes) and ``gpt2`` both mean gpt2.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    for _ in range(2):  # tolerate one level of double encoding
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        if isinstance(decoded, str) and decoded != text:
            text = decoded
            continue
        return decoded
    return text


def _decode_str(raw: str) -> str:
    """A string value, with up to two levels of JSON string encoding removed."""
    text = raw.strip()
    for _ in range(2):
        if not (len(text) >= 2 and text[0] == text[-1] == '"'):
            break
        try:
            decoded = json.loads(text)
        except ValueError:
            break
        if not isinstance(decoded, str):
            break
        text = decoded.strip()
    return text


def _coerce(param: Param, raw: Any) -> tuple[Any, str | None]:
    """Return (value, error)."""
    expected = param.describe_range()
    if param.type == "str":
        value = _decode_str(raw) if isinstance(raw, str) else str(raw)
        value = value.strip()
        if not value:
            return None, "must not be empty"
        if param.max_length and len(value) > param.max_length:
            return None, f"must be at most {param.max_length} characters"
        if any(c in value for c in "\r\n\t\x00"):
            return None, "must not contain control characters"
        return value, None
    value = decode_value(raw)
    if param.type == "choice":
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text not in (param.choices or ()):
            return None, f"must be {expected} (got {describe_value(raw)})"
        return text, None
    if param.type == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, int) and value in (0, 1):
            return bool(value), None
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE, None
        return None, f"must be true or false (got {describe_value(raw)})"
    # numbers
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"must be {expected} (got {describe_value(raw)})"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"must be {expected} (got {describe_value(raw)})"
    if param.type == "int":
        if isinstance(value, float):
            if not value.is_integer():
                return None, f"must be {expected} (got {describe_value(raw)})"
            value = int(value)
    else:
        value = float(value)
    too_low = param.min is not None and (value <= param.min if param.min_exclusive else value < param.min)
    too_high = param.max is not None and value > param.max
    if too_low or too_high:
        return None, f"must be {expected} (got {describe_value(raw)})"
    return value, None


def validate_hyperparameters(values: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Check and normalise hyperparameters.

    ``values`` may hold typed values (from JSON / a form's cleaned data) or strings (CLI,
    SageMaker, raw form data). Missing, ``None`` and ``""`` values take the default.

    Returns ``(clean, errors)``: ``clean`` has every known name with a typed value (defaults
    filled in, ``learning_rate`` resolved); ``errors`` maps a field name to a message saying
    what is allowed. ``clean`` is only meaningful when ``errors`` is empty.
    """
    values = dict(values or {})
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    known = ", ".join(HYPERPARAMETERS)
    for name in values:
        if name not in HYPERPARAMETERS:
            errors[name] = f"unknown hyperparameter {describe_value(name)} (known: {known})"
    for name, param in HYPERPARAMETERS.items():
        raw = values.get(name)
        if raw is None or (isinstance(raw, str) and raw.strip() in ("", "null", "None")):
            clean[name] = param.default
            continue
        value, error = _coerce(param, raw)
        if error:
            errors[name] = error
        else:
            clean[name] = value

    base = clean.get("base_model")
    if "base_model" not in errors and is_scratch_model(base) and base not in SCRATCH_MODELS:
        known_scratch = ", ".join(SCRATCH_MODELS)
        errors["base_model"] = f"unknown scratch model {describe_value(base)}: use one of {known_scratch}"
    method_ok = "method" not in errors and clean.get("method", "full") == "full"
    if "base_model" not in errors and is_scratch_model(base) and not method_ok and "method" not in errors:
        why = (
            "QLoRA quantises a pretrained model's weights to 4 bits, and a scratch model's are random: "
            "there is nothing to quantise"
            if clean["method"] == "qlora"
            else "LoRA trains small adapters on top of a model's learned weights, and a scratch model "
            "starts from random ones"
        )
        errors["method"] = (
            f"must be full for scratch models (got {describe_value(clean['method'])}): {why}. "
            "Choose full fine-tuning, or a Hub model for LoRA"
        )
    if clean.get("sharding") == "fsdp" and clean.get("method") in ADAPTER_METHODS and "method" not in errors:
        errors["sharding"] = (
            f"fsdp shards a full fine-tune; method {clean['method']} trains a small adapter, which every GPU "
            "holds whole: use sharding ddp or auto, or method full"
        )
    if clean.get("learning_rate") is None and "learning_rate" not in errors:
        if is_scratch_model(base):
            clean["learning_rate"] = DEFAULT_LEARNING_RATES["scratch"]
        else:
            clean["learning_rate"] = DEFAULT_LEARNING_RATES.get(clean.get("method"), 5e-5)
    return clean, errors


def format_errors(errors: Mapping[str, str]) -> str:
    """One line naming every bad field: ``"Invalid hyperparameters: lora_r: must be ...; seed: ..."``."""
    return "Invalid hyperparameters: " + "; ".join(f"{shorten(k)}: {v}" for k, v in errors.items())


def _encode(value: Any) -> str:
    return json.dumps(value)


def to_cli_args(clean: Mapping[str, Any]) -> list[str]:
    """``["--name", "value", ...]`` for running finetune.py locally (values JSON-encoded, None skipped)."""
    args: list[str] = []
    for name, value in clean.items():
        if value is None:
            continue
        args += [f"--{name}", value if isinstance(value, str) else _encode(value)]
    return args


def to_sagemaker_hyperparameters(clean: Mapping[str, Any]) -> dict[str, str]:
    """The ``HyperParameters`` map of a CreateTrainingJob request: every value JSON-encoded as a string.

    (If you use the SageMaker Python SDK instead, hand it ``clean`` as is: it encodes itself.)
    """
    return {name: _encode(value) for name, value in clean.items() if value is not None}
