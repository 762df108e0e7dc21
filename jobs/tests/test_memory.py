"""The memory check before launch: the formula against published figures, and the form refusing a job
that cannot fit its GPU, with the changes that would make it fit."""

# ruff: noqa: F811 (fixtures imported from other test modules are redefined as arguments)
from __future__ import annotations

from dataclasses import replace

import pytest

from jobs import memory
from jobs.forms import NewJobForm
from jobs.memory import GIB, Setup, check_setup, peak_memory, shape_of
from jobs.models import BaseModel, InstanceType
from jobs.tests.conftest import make_job, make_ready_dataset, scratch_base_model

LLAMA_7B = "meta-llama/Llama-2-7b-hf"
LLAMA_1B = "meta-llama/Llama-3.2-1B"


def setup(hub_id=LLAMA_7B, parameters=6_740_000_000, **fields) -> Setup:
    return Setup(parameters=parameters, shape=shape_of(hub_id, parameters), **fields)


def term(estimate, starts: str) -> int:
    return sum(amount for name, amount in estimate.terms if name.startswith(starts))


# --- the formula --------------------------------------------------------------------------------


def test_full_fine_tuning_with_adamw_in_mixed_precision_takes_16_bytes_a_parameter_and_autocasts_copies():
    found = peak_memory(setup(method="full", precision="bf16"))
    state = term(found, "weights") + term(found, "gradients") + term(found, "optimizer")
    assert state / 6.74e9 == pytest.approx(16, rel=0.01)  # ZeRO paper's figure: 2 + 2 + 12
    assert term(found, "half-precision weight copies") / 6.74e9 == pytest.approx(2, rel=0.01)


def test_lora_keeps_a_16_bit_frozen_base_and_trains_only_small_adapters():
    found = peak_memory(setup(method="lora", precision="bf16"))
    assert term(found, "frozen base weights") / 6.74e9 == pytest.approx(2, rel=0.01)
    adapters = memory.lora_parameters(found.setup.shape, 16)
    assert adapters < 0.01 * 6.74e9  # r = 16 on two projections a layer: about 8 M of 6.7 B
    assert term(found, "optimizer") == 8 * adapters
    fp32 = peak_memory(setup(method="lora", precision="fp32"))
    assert term(fp32, "frozen base weights") == 2 * term(found, "frozen base weights")


def test_qlora_keeps_the_base_in_about_half_a_byte_a_parameter():
    found = peak_memory(setup(method="qlora"))
    per_parameter = term(found, "frozen base weights") / 6.74e9
    assert 0.5 <= per_parameter <= 0.6  # 4-bit NF4 with double quantisation, embeddings in bf16


def test_activations_grow_with_batch_and_sequence_and_checkpointing_keeps_a_fraction():
    one = peak_memory(setup(method="lora", batch_size=4, seq_length=512))
    two = peak_memory(setup(method="lora", batch_size=8, seq_length=512))
    assert term(two, "activations") == 2 * term(one, "activations")
    assert term(two, "logits") == 2 * term(one, "logits")
    longer = peak_memory(setup(method="lora", batch_size=4, seq_length=1024))
    assert term(longer, "activations") == 2 * term(one, "activations")
    checkpointed = peak_memory(setup(method="lora", batch_size=8, gradient_checkpointing=True))
    assert term(checkpointed, "activations") < term(two, "activations") / 8
    fp32 = peak_memory(setup(method="lora", batch_size=8, precision="fp32"))
    assert term(fp32, "activations") == 2 * term(two, "activations")


def test_several_devices_add_ddp_buckets_or_shard_with_fsdp():
    alone = peak_memory(setup(method="full"))
    ddp = peak_memory(setup(method="full", world_size=8))
    fsdp = peak_memory(setup(method="full", world_size=8, fsdp=True))
    assert term(ddp, "DDP gradient buckets") == term(alone, "gradients")
    assert term(fsdp, "optimizer") == term(alone, "optimizer") // 8
    assert term(fsdp, "weights") == term(alone, "weights") // 8
    assert term(fsdp, "activations") == term(alone, "activations")  # per-device batch unchanged
    assert fsdp.total_bytes < ddp.total_bytes
    assert fsdp.setup.effective_batch == 8 * 8


def test_a_full_fine_tune_over_several_gpus_shards_only_when_ddp_does_not_fit():
    small = check_setup(setup("gpt2", 124_000_000, method="full", world_size=4), 24)
    assert small.fits and not small.setup.fsdp and small.strategy == "DDP over 4 devices"
    big = setup(method="full", world_size=8, gradient_checkpointing=True)
    assert not peak_memory(big, 40).fits  # under DDP every device would hold the whole state
    sharded = check_setup(big, 40)
    assert sharded.setup.fsdp and sharded.fits and sharded.strategy == "FSDP over 8 devices"
    lora = check_setup(setup(method="lora", world_size=4, batch_size=64), 24)
    assert not lora.fits and not lora.setup.fsdp  # LoRA trains under DDP: more GPUs do not help


def test_the_allocated_figure_leaves_out_the_cuda_context():
    found = peak_memory(setup("gpt2", 124_000_000))
    assert found.total_bytes - found.allocated_bytes == memory.OVERHEAD_BYTES


def test_remedies_are_only_changes_that_fit():
    too_big = setup(method="lora", batch_size=8, seq_length=512)
    assert not check_setup(too_big, 24).fits
    remedies = memory.config_remedies(too_big, 24, qlora_possible=True)
    changes = [remedy.change for remedy in remedies]
    assert "gradient checkpointing on" in changes
    assert "batch_size 4 with gradient_accumulation_steps 2" in changes  # same 8 examples a step
    for remedy in remedies:
        assert check_setup(replace(too_big, **remedy.fields), 24).fits
        assert remedy.estimate.total_bytes <= 24 * GIB


def test_an_unknown_model_gets_a_shape_from_its_parameter_count():
    derived = shape_of("someone/unknown-7b", 7_000_000_000)
    assert 3000 < derived.hidden < 5000 and 25 <= derived.layers <= 45
    assert 12 * derived.layers * derived.hidden**2 == pytest.approx(7e9, rel=0.15)


# --- the form -----------------------------------------------------------------------------------


@pytest.fixture
def dataset(owner):
    return make_ready_dataset(owner)


def form_data(dataset, base_model, **overrides) -> dict:
    data = {
        "dataset": dataset.pk,
        "base_model": base_model.pk,
        "backend": "local",
        "preset": "custom",
        "method": "full",
        "epochs": "1",
        "max_steps": "20",
        "batch_size": "8",
        "gradient_accumulation_steps": "1",
        "max_seq_length": "512",
        "packing": "on",
        "merge_adapter": "on",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def sagemaker(instance="ml.g5.xlarge", count=1) -> dict:
    return {
        "backend": "sagemaker",
        "instance_type": InstanceType.objects.get(name=instance).pk,
        "instance_count": str(count),
    }


@pytest.fixture
def cloud(settings):
    settings.SAGEMAKER_ROLE_ARN = "arn:aws:iam::123456789012:role/SageMakerRole"
    settings.SAGEMAKER_BUCKET = "llmtuner-test"
    return settings


def refusal(form) -> str:
    return " ".join(form.non_field_errors())


@pytest.mark.django_db
def test_the_catalogue_holds_the_memory_of_every_gpu_type():
    for instance_type in InstanceType.objects.filter(gpu_count__gt=0):
        assert instance_type.gpu_memory_gib >= 16, instance_type.name


@pytest.mark.django_db
def test_a_7b_full_fine_tune_on_one_a10g_is_refused_naming_what_fits(owner, dataset, cloud):
    llama = BaseModel.objects.get(hub_id=LLAMA_7B)
    form = NewJobForm(owner, form_data(dataset, llama, **sagemaker()))

    assert not form.is_valid()
    message = refusal(form)
    assert "This job needs about 132" in message and "ml.g5.xlarge (NVIDIA A10G) has 24 GiB" in message
    assert "method QLoRA (4-bit base)" in message
    # Eight A100s fit it sharded: FSDP divides the 16 bytes a parameter of its training state by 8.
    assert "training on ml.p4d.24xlarge (8 × 40 GiB" in message and "FSDP over 8 devices" in message
    assert "method LoRA" not in message  # LoRA alone, at batch 8 without checkpointing, needs 32 GiB
    assert form.memory.total_gib > 24 and not form.memory.fits

    # The changes it names make the form valid.
    assert NewJobForm(owner, form_data(dataset, llama, method="qlora", **sagemaker())).is_valid()
    on_p4d = NewJobForm(owner, form_data(dataset, llama, **sagemaker("ml.p4d.24xlarge")))
    assert on_p4d.is_valid(), refusal(on_p4d)
    assert on_p4d.memory.setup.fsdp and on_p4d.memory.setup.world_size == 8
    assert on_p4d.memory.strategy == "FSDP over 8 devices"


@pytest.mark.django_db
def test_a_full_fine_tune_told_to_use_ddp_is_checked_as_ddp_and_told_that_fsdp_fits(owner, dataset, cloud):
    llama = BaseModel.objects.get(hub_id=LLAMA_7B)
    form = NewJobForm(owner, form_data(dataset, llama, sharding="ddp", **sagemaker("ml.p4d.24xlarge")))

    assert not form.is_valid()
    assert not form.memory.setup.fsdp and form.memory.strategy == "DDP over 8 devices"
    assert "It would fit with any one of: sharding fsdp (or auto) (about 34.9 GiB)" in refusal(form)


@pytest.mark.django_db
def test_the_script_is_told_the_sharding_the_memory_check_chose(owner, dataset):
    llama = BaseModel.objects.get(hub_id=LLAMA_7B)
    gpt2 = BaseModel.objects.get(hub_id="gpt2")
    full = {"base_model": LLAMA_7B, "method": "full"}
    assert memory.with_sharding(full, llama, 40, 8)["sharding"] == "fsdp"  # DDP needs 132 GiB a GPU
    assert memory.with_sharding(full, llama, 80, 1)["sharding"] == "ddp"  # one GPU: nothing to shard
    assert memory.with_sharding({"base_model": "gpt2"}, gpt2, 40, 8)["sharding"] == "ddp"  # DDP fits
    assert memory.with_sharding({**full, "sharding": "ddp"}, llama, 40, 8)["sharding"] == "ddp"  # as asked
    assert memory.with_sharding({"base_model": "gpt2", "sharding": "fsdp"}, gpt2, 0, 2)["sharding"] == "fsdp"


@pytest.mark.django_db
def test_lora_that_does_not_fit_is_told_about_checkpointing_and_a_smaller_batch(owner, dataset, cloud):
    llama = BaseModel.objects.get(hub_id=LLAMA_7B)
    form = NewJobForm(owner, form_data(dataset, llama, method="lora", **sagemaker()))

    assert not form.is_valid()
    message = refusal(form)
    assert "gradient checkpointing on" in message
    assert "batch_size 4 with gradient_accumulation_steps 2" in message
    fixed = NewJobForm(
        owner, form_data(dataset, llama, method="lora", gradient_checkpointing="on", **sagemaker())
    )
    assert fixed.is_valid(), refusal(fixed)
    smaller = NewJobForm(
        owner,
        form_data(
            dataset, llama, method="lora", batch_size="4", gradient_accumulation_steps="2", **sagemaker()
        ),
    )
    assert smaller.is_valid(), refusal(smaller)


@pytest.mark.django_db
def test_this_machine_is_checked_only_when_its_gpu_memory_is_set(owner, dataset, settings):
    llama_1b = BaseModel.objects.get(hub_id=LLAMA_1B)
    settings.LOCAL_GPU_MEMORY_GIB = 0
    unchecked = NewJobForm(owner, form_data(dataset, llama_1b))
    assert unchecked.is_valid(), unchecked.errors
    assert not unchecked.memory.checked  # CPU RAM is not checked

    settings.LOCAL_GPU_MEMORY_GIB = 16
    checked = NewJobForm(owner, form_data(dataset, llama_1b))
    assert not checked.is_valid()
    message = refusal(checked)
    assert "each of this machine's GPUs (LOCAL_GPU_MEMORY_GIB) has 16 GiB" in message
    assert "method LoRA" in message
    assert "ml." not in message  # no instance types for this machine
    gpt2 = BaseModel.objects.get(hub_id="gpt2")
    assert NewJobForm(owner, form_data(dataset, gpt2)).is_valid()


@pytest.mark.django_db
def test_the_estimate_shows_the_memory_against_the_gpu_and_its_terms(client, owner, dataset, cloud):
    client.force_login(owner)
    llama = BaseModel.objects.get(hub_id=LLAMA_7B)
    page = client.get("/jobs/new/estimate/", form_data(dataset, llama, method="lora", **sagemaker()))

    html = page.content.decode()
    assert page.status_code == 200
    assert "data-memory-too-big" in html and "does not fit" in html
    assert "of <span data-memory-capacity>24 GiB</span>" in html
    assert "Frozen base weights (bf16)" in html and "Activations (32 layers)" in html
    assert "would run out of memory" in html
    fits = client.get(
        "/jobs/new/estimate/",
        form_data(dataset, llama, method="lora", gradient_checkpointing="on", **sagemaker("ml.g5.12xlarge")),
    ).content.decode()
    assert "· fits" in fits and "DDP over 4 devices" in fits
    assert "effective batch 32" in fits  # 8 per device × 1 × 4 GPUs
    here = client.get("/jobs/new/estimate/", form_data(dataset, llama, method="lora")).content.decode()
    assert "Memory per device" in here and "not checked: it trains on CPU" in here
    assert "would run out of memory" not in here


@pytest.mark.django_db
def test_a_clone_of_a_job_that_cannot_fit_shows_the_refusal(client, owner, dataset, cloud):
    llama = BaseModel.objects.get(hub_id=LLAMA_7B)
    job = make_job(
        owner,
        dataset,
        base_model=llama,
        backend="sagemaker",
        instance_type=InstanceType.objects.get(name="ml.g5.xlarge"),
        instance_count=3,
        hyperparameters={"method": "lora", "batch_size": 8, "max_seq_length": 512, "max_steps": 20},
    )
    client.force_login(owner)
    html = client.get(f"/jobs/{job.pk}/clone/").content.decode()

    assert "would run out of memory" in html
    assert 'name="instance_count" value="3"' in html


# --- QLoRA where it can run ---------------------------------------------------------------------


@pytest.mark.django_db
def test_qlora_is_offered_for_a_causal_model_on_a_gpu_instance(owner, dataset, cloud):
    gpt2 = BaseModel.objects.get(hub_id="gpt2")
    form = NewJobForm(owner, form_data(dataset, gpt2, method="qlora", **sagemaker()))

    assert form.is_valid(), form.errors
    assert form.cleaned_data["hyperparameters"]["method"] == "qlora"
    assert ("qlora", "QLoRA (4-bit base, LoRA adapters; CUDA GPUs)") in form.fields["method"].choices


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("hub_id", "where", "reason"),
    [
        ("gpt2", "local", "this machine's worker trains on CPU (LOCAL_GPU_MEMORY_GIB is not set)"),
        ("gpt2", "ml.m5.xlarge", "ml.m5.xlarge has none: choose a GPU instance type or use LoRA"),
        ("google/flan-t5-small", "ml.g5.xlarge", "FLAN-T5 Small is sequence-to-sequence: use LoRA"),
        ("scratch:tiny-gpt2", "ml.g5.xlarge", "a scratch model's are random: there is nothing to quantise"),
    ],
)
def test_qlora_is_refused_where_it_cannot_run_with_the_reason(owner, dataset, cloud, hub_id, where, reason):
    model = scratch_base_model() if hub_id.startswith("scratch:") else BaseModel.objects.get(hub_id=hub_id)
    placement = {} if where == "local" else sagemaker(where)
    form = NewJobForm(owner, form_data(dataset, model, method="qlora", max_seq_length="64", **placement))

    assert not form.is_valid()
    assert reason in " ".join(form.errors["method"])


@pytest.mark.django_db
def test_qlora_runs_locally_when_the_worker_has_a_gpu(owner, dataset, settings):
    settings.LOCAL_GPU_MEMORY_GIB = 24
    gpt2 = BaseModel.objects.get(hub_id="gpt2")
    form = NewJobForm(owner, form_data(dataset, gpt2, method="qlora"))
    assert form.is_valid(), form.errors


def test_a_benchmark_gets_the_figure_from_the_command_line(capsys):
    memory.main(["--parameters", "124e6", "--hidden", "768", "--layers", "12", "--vocab", "50257"])
    printed = capsys.readouterr().out
    expected = peak_memory(Setup(124_000_000, memory.SHAPES["gpt2"]))
    assert f"{expected.allocated_bytes / GIB:8.3f} GiB" in printed.splitlines()[-2]
    assert printed.splitlines()[-1].endswith(f"{expected.total_gib:8.3f} GiB")
