"""The time and cost estimate: finetune.py's schedule, 6 × parameters × tokens, throughput and price."""

from __future__ import annotations

import math
from decimal import Decimal
from types import SimpleNamespace

import pytest

from jobs.estimate import STARTUP_SECONDS, estimate_job, format_duration
from training_scripts.hyperparameters import validate_hyperparameters

SCRATCH = SimpleNamespace(
    hub_id="scratch:tiny-gpt2", parameters=1_000_000, context_length=256, architecture="causal"
)
GPT2 = SimpleNamespace(hub_id="gpt2", parameters=124_000_000, context_length=1024, architecture="causal")
T5 = SimpleNamespace(
    hub_id="google/flan-t5-small", parameters=77_000_000, context_length=512, architecture="seq2seq"
)
A10G_X4 = SimpleNamespace(
    name="ml.g5.12xlarge",
    gpu_count=4,
    bf16_tflops=500.0,
    fp32_tflops=125.0,
    price_per_hour_usd=Decimal("7.09"),
)
CPU_ONLY = SimpleNamespace(
    name="ml.m5.xlarge", gpu_count=0, bf16_tflops=0.0, fp32_tflops=0.4, price_per_hour_usd=Decimal("0.23")
)


def hp(**values):
    clean, errors = validate_hyperparameters({"base_model": "gpt2", **values})  # LoRA needs a Hub model
    assert not errors
    return clean


@pytest.fixture(autouse=True)
def one_local_tflops(settings):
    settings.LOCAL_TRAINING_TFLOPS = 1.0


def test_packed_data_is_cut_into_blocks_of_max_seq_length():
    estimate = estimate_job(
        tokens=10_000,
        samples=7,
        base_model=SCRATCH,
        hyperparameters=hp(max_seq_length=100, batch_size=10, epochs=3),
        backend="local",
    )

    # 100 blocks, 10 per micro-batch, one micro-batch per step: 10 steps an epoch.
    assert estimate.steps_per_epoch == 10
    assert estimate.steps == 30
    assert estimate.train_tokens == 30_000
    assert estimate.epochs == 3


def test_without_packing_each_sample_is_an_example_and_long_ones_are_cut():
    estimate = estimate_job(
        tokens=100_000,
        samples=40,
        base_model=SCRATCH,
        hyperparameters=hp(packing=False, max_seq_length=64, batch_size=8, epochs=1),
        backend="local",
    )

    assert estimate.steps == 5
    assert estimate.train_tokens == 40 * 64


def test_gradient_accumulation_makes_fewer_bigger_steps():
    estimate = estimate_job(
        tokens=10_000,
        samples=7,
        base_model=SCRATCH,
        hyperparameters=hp(max_seq_length=100, batch_size=10, gradient_accumulation_steps=3, epochs=1),
        backend="local",
    )

    assert estimate.steps == 4  # ceil(10 micro-batches / 3)


def test_max_steps_is_the_number_of_steps_as_in_finetune_py():
    common = {"tokens": 10_000, "samples": 7, "base_model": SCRATCH, "backend": "local"}

    fewer = estimate_job(
        **common, hyperparameters=hp(max_seq_length=100, batch_size=10, epochs=3, max_steps=4)
    )
    more = estimate_job(
        **common, hyperparameters=hp(max_seq_length=100, batch_size=10, epochs=1, max_steps=25)
    )

    assert (fewer.steps, fewer.train_tokens) == (4, 4_000)
    # finetune.py goes round the data again to reach max_steps.
    assert (more.steps, more.train_tokens) == (25, 25_000)


def test_sequences_longer_than_a_pretrained_model_allows_are_cut_to_its_context():
    capped = estimate_job(
        tokens=1_000_000,
        samples=10,
        base_model=GPT2,
        hyperparameters=hp(max_seq_length=4096),
        backend="local",
    )
    scratch = estimate_job(
        tokens=1_000_000,
        samples=10,
        base_model=SCRATCH,
        hyperparameters=hp(max_seq_length=4096),
        backend="local",
    )

    assert capped.max_seq_length == 1024
    assert scratch.max_seq_length == 4096  # a scratch model is built as long as asked


def test_seq2seq_trains_on_samples_not_blocks():
    estimate = estimate_job(
        tokens=50_000,
        samples=100,
        base_model=T5,
        hyperparameters=hp(batch_size=10, epochs=2),
        backend="local",
    )

    assert estimate.steps == 20


def test_local_time_is_six_times_parameters_times_tokens_over_the_measured_throughput(settings):
    settings.LOCAL_TRAINING_TFLOPS = 0.5
    estimate = estimate_job(
        tokens=1_000_000,
        samples=1000,
        base_model=GPT2,
        hyperparameters=hp(max_seq_length=1000, batch_size=10, epochs=1),
        backend="local",
    )

    compute = 6 * 124_000_000 * 1_000_000 / 0.5e12
    assert estimate.seconds == pytest.approx(compute + STARTUP_SECONDS["local"], abs=1)
    assert estimate.cost_usd is None  # this machine costs nothing


def test_lora_skips_the_frozen_weights_gradients_and_checkpointing_adds_a_forward():
    common = {"tokens": 1_000_000, "samples": 1000, "base_model": GPT2, "backend": "local"}

    full = estimate_job(**common, hyperparameters=hp(max_seq_length=1000, method="full"))
    lora = estimate_job(**common, hyperparameters=hp(max_seq_length=1000, method="lora"))
    lora_ckpt = estimate_job(
        **common, hyperparameters=hp(max_seq_length=1000, method="lora", gradient_checkpointing=True)
    )

    startup = STARTUP_SECONDS["local"]
    assert (lora.seconds - startup) / (full.seconds - startup) == pytest.approx(4 / 6, rel=0.01)
    assert (lora_ckpt.seconds - startup) / (full.seconds - startup) == pytest.approx(6 / 6, rel=0.01)


def test_sagemaker_trains_on_every_gpu_of_every_instance_and_prices_the_whole_run():
    one = estimate_job(
        tokens=2_000_000,
        samples=1000,
        base_model=GPT2,
        hyperparameters=hp(max_seq_length=1000, epochs=1),
        backend="sagemaker",
        instance_type=A10G_X4,
        instance_count=1,
    )
    estimate = estimate_job(
        tokens=2_000_000,
        samples=1000,
        base_model=GPT2,
        hyperparameters=hp(max_seq_length=1000, epochs=1),
        backend="sagemaker",
        instance_type=A10G_X4,
        instance_count=2,
    )

    # 4 GPUs × 2 instances, each a quarter of the instance's 500 TFLOP/s at 35 % utilisation,
    # keeping 90 % of its speed in company; the effective batch spans all 8 devices.
    assert estimate.world_size == 8
    assert estimate.effective_batch == 8 * one.effective_batch // 4
    assert estimate.steps == math.ceil(one.steps / 2)
    compute = 6 * 124_000_000 * 2_000_000 / (125e12 * 0.35 * 8 * 0.9)
    assert estimate.seconds == pytest.approx(compute + STARTUP_SECONDS["sagemaker"], abs=2)
    expected = Decimal(estimate.seconds) / 3600 * Decimal("7.09") * 2
    assert estimate.cost_usd == expected.quantize(Decimal("0.0001"))
    assert estimate.basis == "from the model's size"
    assert estimate.slow_seconds == pytest.approx(1.5 * estimate.seconds, abs=3)


def test_a_cpu_instance_uses_its_fp32_throughput():
    gpu = estimate_job(
        tokens=100_000,
        samples=100,
        base_model=GPT2,
        hyperparameters=hp(),
        backend="sagemaker",
        instance_type=A10G_X4,
    )
    cpu = estimate_job(
        tokens=100_000,
        samples=100,
        base_model=GPT2,
        hyperparameters=hp(),
        backend="sagemaker",
        instance_type=CPU_ONLY,
    )

    assert cpu.tflops == pytest.approx(0.4 * 0.35)
    assert cpu.seconds > gpu.seconds


def test_an_empty_dataset_still_gives_one_step():
    estimate = estimate_job(tokens=0, samples=0, base_model=SCRATCH, hyperparameters=hp(), backend="local")

    assert estimate.steps >= 1
    assert estimate.train_tokens == 0
    assert estimate.seconds == STARTUP_SECONDS["local"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, ""),
        (0, "0 s"),
        (59, "59 s"),
        (61, "1 min 01 s"),
        (600, "10 min"),
        (3725, "1 h 02 min"),
        (200_000, "2 d 7 h"),
    ],
)
def test_durations_read_naturally(seconds, shown):
    assert format_duration(seconds) == shown
