"""The hyperparameter spec: defaults, decoding what SageMaker passes, errors that name the field."""

from __future__ import annotations

import finetune
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training_scripts.hyperparameters import (
    DEFAULTS,
    HYPERPARAMETERS,
    SCRATCH_MODELS,
    decode_value,
    format_errors,
    to_cli_args,
    to_sagemaker_hyperparameters,
    validate_hyperparameters,
)


def test_defaults_are_valid():
    clean, errors = validate_hyperparameters({})
    assert errors == {}
    assert set(clean) == set(HYPERPARAMETERS) == set(DEFAULTS)
    assert clean["base_model"] in SCRATCH_MODELS and clean["learning_rate"] == 1e-3
    assert clean["merge_adapter"] is True and clean["packing"] is True and clean["max_steps"] == 0


def test_sagemaker_encoded_values_are_decoded():
    clean, errors = validate_hyperparameters(
        {
            "base_model": '"gpt2"',
            "method": '"lora"',
            "packing": "true",
            "learning_rate": "5e-05",
            "epochs": "2",
            "max_steps": "null",
            "gradient_checkpointing": "False",
            "lr_scheduler": '"cosine"',
        }
    )
    assert errors == {}
    assert clean["base_model"] == "gpt2" and clean["method"] == "lora" and clean["packing"] is True
    assert clean["learning_rate"] == 5e-05 and clean["epochs"] == 2.0 and clean["max_steps"] == 0
    assert clean["gradient_checkpointing"] is False and clean["lr_scheduler"] == "cosine"
    assert validate_hyperparameters({"base_model": "gpt2"})[0]["base_model"] == "gpt2"
    assert validate_hyperparameters({"base_model": '"\\"gpt2\\""'})[0]["base_model"] == "gpt2"
    assert decode_value("5e-05") == 5e-05 and decode_value("gpt2") == "gpt2"


def test_learning_rate_default_follows_method():
    assert validate_hyperparameters({"base_model": "gpt2", "method": "lora"})[0]["learning_rate"] == 2e-4
    assert validate_hyperparameters({"base_model": "gpt2"})[0]["learning_rate"] == 5e-5
    assert validate_hyperparameters({"base_model": "gpt2", "learning_rate": ""})[0]["learning_rate"] == 5e-5


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"epochs": 0}, "epochs", "greater than 0"),
        ({"batch_size": 2.5}, "batch_size", "an integer between 1 and 1024"),
        ({"batch_size": True}, "batch_size", "an integer"),
        ({"max_seq_length": 8}, "max_seq_length", "between 16 and 131072"),
        ({"lora_dropout": 1.0}, "lora_dropout", "between 0 and 0.9"),
        ({"warmup_ratio": "lots"}, "warmup_ratio", "a number between 0 and 0.9"),
        ({"method": "dora"}, "method", "one of full, lora, qlora"),
        ({"method": "qlora"}, "method", "a scratch model's are random: there is nothing to quantise"),
        ({"precision": "fp16"}, "precision", "one of auto, fp32, bf16"),
        ({"lr_scheduler": "step"}, "lr_scheduler", "constant_with_warmup"),
        ({"packing": "maybe"}, "packing", "true or false"),
        ({"learning_rate": "nan"}, "learning_rate", "a number"),
        ({"base_model": "scratch:huge"}, "base_model", "scratch:tiny-gpt2"),
        ({"base_model": "a\nb"}, "base_model", "control characters"),
        ({"method": "lora"}, "method", "must be full for scratch models (got 'lora'): LoRA trains small"),
        ({"foo": 1}, "foo", "unknown hyperparameter 'foo'"),
        ({"sharding": "zero3"}, "sharding", "one of auto, ddp, fsdp"),
        (
            {"base_model": "gpt2", "method": "lora", "sharding": "fsdp"},
            "sharding",
            "fsdp shards a full fine-tune; method lora trains a small adapter",
        ),
    ],
)
def test_invalid_values_name_the_field_and_the_range(values, field, fragment):
    _, errors = validate_hyperparameters(values)
    assert field in errors and fragment in errors[field], errors
    assert format_errors(errors).startswith(f"Invalid hyperparameters: {field}: ")


_valid_values = st.fixed_dictionaries(
    {},
    optional={
        "base_model": st.sampled_from(["gpt2", "Qwen/Qwen2.5-0.5B", "scratch:tiny-gpt2", "/models/my model"]),
        "method": st.sampled_from(["full", "lora"]),
        "epochs": st.floats(min_value=0.01, max_value=1000),
        "max_steps": st.integers(0, 10_000_000),
        "learning_rate": st.floats(min_value=1e-9, max_value=1),
        "batch_size": st.integers(1, 1024),
        "packing": st.booleans(),
        "lora_dropout": st.floats(0, 0.9),
        "lr_scheduler": st.sampled_from(["linear", "cosine", "constant"]),
        "seed": st.integers(0, 2**31 - 1),
    },
).filter(  # LoRA needs a model with learned weights: refused on a scratch one
    lambda values: (
        values.get("method") != "lora" or not values.get("base_model", "scratch:").startswith("scratch:")
    )
)


@settings(max_examples=200, deadline=None)
@given(_valid_values)
def test_cli_and_sagemaker_encodings_round_trip(values):
    clean, errors = validate_hyperparameters(values)
    assert errors == {}
    _, raw = finetune.parse_args(["--train_dir", "/data", *to_cli_args(clean)])
    assert validate_hyperparameters(raw) == (clean, {})
    encoded = to_sagemaker_hyperparameters(clean)
    assert all(isinstance(v, str) for v in encoded.values())
    assert validate_hyperparameters(encoded) == (clean, {})
