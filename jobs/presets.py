"""Hyperparameter presets for the new-job form.

Each preset gives values for some fields of training_scripts.hyperparameters;
the rest keep the spec's defaults. "automatic" is worked out from the
dataset's size and the model's size, the way a careful person would start.
"""

from __future__ import annotations

import math
from typing import Any

from training_scripts.hyperparameters import DEFAULTS

AUTOMATIC = "automatic"
CUSTOM = "custom"
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "epochs": 1.0,
        "max_steps": 50,
        "batch_size": 8,
        "max_seq_length": 256,
        "logging_steps": 5,
        "eval_steps": 25,
        "num_sample_generations": 2,
    },
    "balanced": {
        "epochs": 3.0,
        "max_steps": 0,
        "batch_size": 8,
        "max_seq_length": 512,
        "warmup_ratio": 0.03,
    },
    "thorough": {
        "epochs": 5.0,
        "max_steps": 0,
        "batch_size": 8,
        "gradient_accumulation_steps": 2,
        "max_seq_length": 1024,
        "warmup_ratio": 0.05,
        "lr_scheduler": "cosine",
        "weight_decay": 0.01,
    },
}
PRESET_CHOICES = [
    (AUTOMATIC, "Automatic: from your data and the model"),
    ("quick", "Quick test: 50 steps, to check that it all works"),
    ("balanced", "Balanced: 3 epochs"),
    ("thorough", "Thorough: 5 epochs, longer sequences"),
    (CUSTOM, "Custom: keep my values"),
]
# The automatic preset aims at this many trained tokens, between 1 and 10 epochs.
AUTOMATIC_TARGET_TOKENS = 2_000_000
BIG_MODEL_PARAMETERS = 1_000_000_000


def preset_values(preset: str, *, base_model=None, dataset=None) -> dict[str, Any]:
    """Every hyperparameter (bar base_model) as the preset sets it: spec defaults, then the preset's."""
    values = {name: value for name, value in DEFAULTS.items() if name != "base_model"}
    if base_model is not None:
        values["method"] = base_model.recommended_method
    if preset == AUTOMATIC:
        values.update(automatic(base_model, dataset))
    else:
        values.update(PRESETS.get(preset, {}))
    if base_model is not None:
        values["max_seq_length"] = _fit_context(values["max_seq_length"], base_model)
    return values


def automatic(base_model, dataset) -> dict[str, Any]:
    stats = (dataset.stats or {}) if dataset is not None else {}
    tokens = int(stats.get("train_tokens") or stats.get("tokens") or 0)
    lengths = stats.get("token_lengths") or {}
    longest_useful = int(lengths.get("p95") or lengths.get("max") or 0)
    parameters = int(base_model.parameters) if base_model is not None else 0
    big = parameters >= BIG_MODEL_PARAMETERS

    # A power of two that holds 95 % of the samples whole, 128 to 2048 tokens.
    seq = 512 if not longest_useful else 2 ** math.ceil(math.log2(max(longest_useful, 128)))
    seq = min(seq, 1024 if big else 2048)
    # About 16k tokens per optimizer step; big models take smaller micro-batches.
    micro_tokens = 4096 if big else 8192
    batch_size = max(1, min(32, micro_tokens // seq))
    accumulation = max(1, 16384 // (batch_size * seq))
    epochs = 3.0 if not tokens else float(min(10, max(1, round(AUTOMATIC_TARGET_TOKENS / tokens))))
    values: dict[str, Any] = {
        "epochs": epochs,
        "max_steps": 0,
        "batch_size": batch_size,
        "gradient_accumulation_steps": accumulation,
        "max_seq_length": seq,
        "warmup_ratio": 0.03,
        "lr_scheduler": "cosine",
        "gradient_checkpointing": big,
    }
    if base_model is not None:
        values["method"] = "lora" if big else base_model.recommended_method
    return values


def _fit_context(seq: int, base_model) -> int:
    # The catalogue's context length, for scratch models too (they could take more, but slowly).
    return min(seq, int(base_model.context_length)) if base_model.context_length else seq
