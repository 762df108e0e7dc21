"""Training over several GPUs and instances: SageMaker's Torchrun driver and instance count, what it
costs and reserves, manifests, checkpoints every 15 minutes on SageMaker, and local torchrun."""

# ruff: noqa: F811 (fixtures imported from other test modules are redefined as arguments)
from __future__ import annotations

import json
import os
import stat
import sys
from decimal import ROUND_HALF_UP, Decimal

import boto3
import pytest

from jobs import pricing
from jobs.backends import local
from jobs.backends import sagemaker as sm
from jobs.forms import NewJobForm
from jobs.models import BaseModel, InstanceType, JobStatus, TrainingJob
from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_job, make_ready_dataset, scratch_base_model
from jobs.tests.test_sagemaker_submit import bucket_keys, moto, requests_sent  # noqa: F401 (fixtures)
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    BUCKET,
    REGION,
    fake_aws,
    instance,
    sagemaker_job,
    sagemaker_settings,
)
from jobs.tests.test_submit_jobs import run, run_failing, write

pytestmark = pytest.mark.django_db


def drivers_file(prefix: str, name: str) -> str:
    [key] = [key for key in bucket_keys(prefix) if key.endswith(f"/sm_drivers/{name}")]
    return boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def twelve_xlarge() -> InstanceType:
    found, _ = InstanceType.objects.get_or_create(
        name="ml.g5.12xlarge",
        defaults={
            "vcpus": 48,
            "memory_gib": 192,
            "gpu_type": "NVIDIA A10G",
            "gpu_count": 4,
            "gpu_memory_gib": 24,
            "price_per_hour_usd": "7.0900",
            "price_date": "2025-01-01",
        },
    )
    return found


# --- SageMaker: the request -------------------------------------------------------------------


def test_two_instances_train_through_the_torchrun_driver_one_process_per_gpu(owner, moto, requests_sent):
    job = sagemaker_job(owner, running=False, instance_count=2)
    sm.submit_job(job.pk)
    job.refresh_from_db()

    assert job.sagemaker_status == "InProgress", job.status_message
    [request] = requests_sent
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    # $10 on 2 × $1.408/h: the runtime cap counts both instances.
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 12784
    prefix = f"users/{owner.pk}/jobs/{job.pk}"
    assert json.loads(drivers_file(prefix, "distributed.json"))["process_count_per_node"] == 1
    script = drivers_file(prefix, "sm_train.sh")
    assert "torchrun_driver.py" in script and "basic_script_driver.py" not in script
    assert any(
        key.endswith("/sm_drivers/distributed_drivers/torchrun_driver.py") for key in bucket_keys(prefix)
    )


def test_an_instance_with_four_gpus_starts_four_processes(owner, moto, requests_sent):
    job = sagemaker_job(owner, running=False)
    TrainingJob.objects.filter(pk=job.pk).update(instance_type=twelve_xlarge())
    sm.submit_job(job.pk)

    [request] = requests_sent
    assert request["ResourceConfig"]["InstanceCount"] == 1
    prefix = f"users/{owner.pk}/jobs/{job.pk}"
    assert json.loads(drivers_file(prefix, "distributed.json"))["process_count_per_node"] == 4
    assert "torchrun_driver.py" in drivers_file(prefix, "sm_train.sh")


def test_one_gpu_on_one_instance_keeps_the_basic_driver(owner, moto, requests_sent):
    job = sagemaker_job(owner, running=False)
    sm.submit_job(job.pk)

    prefix = f"users/{owner.pk}/jobs/{job.pk}"
    script = drivers_file(prefix, "sm_train.sh")
    assert "basic_script_driver.py" in script and "torchrun_driver.py" not in script


def test_processes_per_host_follow_the_gpus_and_the_instance_count():
    cpu, one, four = instance("ml.m5.xlarge"), instance("ml.g5.xlarge"), twelve_xlarge()
    assert sm.submit.processes_per_host(one, 1) == 0
    assert sm.submit.processes_per_host(cpu, 1) == 0
    assert sm.submit.processes_per_host(cpu, 3) == 1  # CPU hosts: one process each
    assert sm.submit.processes_per_host(one, 2) == 1
    assert sm.submit.processes_per_host(four, 1) == 4
    assert sm.submit.processes_per_host(four, 8) == 4


def test_a_sagemaker_job_checkpoints_every_15_minutes_unless_it_says_otherwise(
    owner, sagemaker_settings, moto, requests_sent
):
    dataset = make_ready_dataset(owner)
    data = form_data(dataset, backend="sagemaker", instance_type=instance().pk, use_spot="on")
    form = NewJobForm(owner, data)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["hyperparameters"]["checkpoint_minutes"] == 15
    hyperparameters = form.cleaned_data["hyperparameters"]
    job = make_job(
        owner,
        dataset,
        backend="sagemaker",
        instance_type=instance(),
        use_spot=True,
        max_cost_usd=Decimal(10),
        hyperparameters=hyperparameters,
    )
    sm.submit_job(job.pk)
    [request] = requests_sent
    assert request["HyperParameters"]["checkpoint_minutes"] == "15.0"

    chosen = NewJobForm(owner, {**data, "checkpoint_minutes": "30"})
    assert chosen.is_valid(), chosen.errors
    assert chosen.cleaned_data["hyperparameters"]["checkpoint_minutes"] == 30
    here = NewJobForm(owner, form_data(dataset))
    assert here.is_valid(), here.errors
    assert here.cleaned_data["hyperparameters"]["checkpoint_minutes"] == 0  # off locally by default


# --- the form: instance count, cost and budget ------------------------------------------------------


def form_data(dataset, **overrides) -> dict:
    data = {
        "dataset": dataset.pk,
        "base_model": scratch_base_model().pk,
        "backend": "local",
        "preset": "custom",
        "method": "full",
        "epochs": "1",
        "max_steps": "20",
        "batch_size": "4",
        "max_seq_length": "64",
        "packing": "on",
        "merge_adapter": "on",
    }
    data.update(overrides)
    return data


def test_the_instance_count_goes_from_1_to_8_on_sagemaker_only(owner, sagemaker_settings):
    dataset = make_ready_dataset(owner)
    cloud = {"backend": "sagemaker", "instance_type": instance().pk}
    for count, valid in (("1", True), ("8", True), ("0", False), ("9", False), ("two", False)):
        form = NewJobForm(owner, form_data(dataset, instance_count=count, **cloud))
        assert form.is_valid() is valid, (count, form.errors)
        if not valid:
            assert form.errors["instance_count"]
    here = NewJobForm(owner, form_data(dataset, instance_count="4"))
    assert here.is_valid(), here.errors
    assert here.cleaned_data["instance_count"] == 1  # this machine is one machine


def test_the_cost_and_the_budget_reservation_count_every_instance(client, owner, sagemaker_settings):
    dataset = make_ready_dataset(owner)
    cloud = {"backend": "sagemaker", "instance_type": instance().pk, "max_cost_usd": "40"}
    form = NewJobForm(owner, form_data(dataset, instance_count="3", **cloud))
    assert form.is_valid(), form.errors
    expected = (Decimal(form.estimate.seconds) / 3600 * Decimal("1.4080") * 3).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_UP
    )
    assert form.estimate.cost_usd == expected

    client.force_login(owner)
    response = client.post("/jobs/new/", form_data(dataset, instance_count="3", **cloud))
    assert response.status_code == 302
    job = TrainingJob.objects.get(owner=owner)
    assert job.instance_count == 3 and job.status == JobStatus.QUEUED
    assert job.estimated_cost_usd == expected
    assert pricing.reserved_spend(owner) == expected


def test_a_budget_too_small_for_every_instance_is_refused(owner, sagemaker_settings):
    from accounts.models import get_profile

    dataset = make_ready_dataset(owner)
    cloud = {"backend": "sagemaker", "instance_type": instance().pk}
    one = NewJobForm(owner, form_data(dataset, **cloud))
    assert one.is_valid(), one.errors
    profile = get_profile(owner)
    profile.monthly_budget_usd = one.estimate.cost_usd * 2  # room for two instances, not eight
    profile.save()
    eight = NewJobForm(owner, form_data(dataset, instance_count="8", **cloud))
    assert not eight.is_valid()
    assert "monthly budget" in " ".join(eight.non_field_errors())


# --- manifests ---------------------------------------------------------------------------------


def test_a_manifest_entry_sets_the_instance_count(tmp_path, owner, sagemaker_settings):
    dataset = make_ready_dataset(owner)
    write(
        tmp_path / "cloud.yaml",
        f"""
        jobs:
          - {{name: wide, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, instance_count: 4, max_cost_usd: "30"}}
        """,
    )
    run(tmp_path / "cloud.yaml")

    job = TrainingJob.objects.get()
    assert job.instance_count == 4
    single = NewJobForm(
        owner, form_data(dataset, backend="sagemaker", instance_type=instance().pk, max_cost_usd="30")
    )
    assert single.is_valid(), single.errors
    assert job.estimated_cost_usd == pytest.approx(single.estimate.cost_usd * 4, abs=Decimal("0.001"))


def test_manifest_instance_counts_out_of_range_or_local_are_refused(tmp_path, owner, sagemaker_settings):
    dataset = make_ready_dataset(owner)
    scratch_base_model()
    write(
        tmp_path / "bad.yaml",
        f"""
        jobs:
          - {{name: nine, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, instance_count: 9}}
          - {{name: here, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              instance_count: 2}}
          - {{name: words, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, instance_count: [2]}}
          - {{name: cheap, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, instance_count: 8, max_cost_usd: "0.50"}}
        """,
    )
    out, err, _ = run_failing(tmp_path / "bad.yaml")

    assert "entry 1 (nine): instance_count: Ensure this value is less than or equal to 8." in err
    assert "entry 2 (here): instance_count: only SageMaker jobs run on several instances" in err
    assert "entry 3 (words): instance_count: must be a whole number from 1 to 8, not a list" in err
    assert (
        "entry 4 (cheap): max_cost_usd: $0.50 buys only 159 s on 8 × ml.g5.xlarge" in err
    )  # 1 would buy 1278 s
    assert not TrainingJob.objects.exists()


@pytest.mark.django_db
def test_a_manifest_entry_that_cannot_fit_its_gpu_is_refused_like_the_form(
    tmp_path, owner, sagemaker_settings
):
    dataset = make_ready_dataset(owner)
    write(
        tmp_path / "big.yaml",
        f"""
        jobs:
          - {{name: big, user: {owner.email}, dataset: {dataset.pk}, base_model: meta-llama/Llama-2-7b-hf,
              backend: sagemaker, instance_type: ml.g5.xlarge, method: full,
              hyperparameters: {{batch_size: 8, max_seq_length: 512, max_steps: 10}}}}
        """,
    )
    out, err, _ = run_failing(tmp_path / "big.yaml")

    assert "entry 1 (big): This job needs about" in err
    assert "ml.g5.xlarge (NVIDIA A10G) has 24 GiB: it would run out of memory" in err
    assert not TrainingJob.objects.exists()


# --- local: torchrun over the worker's GPUs -----------------------------------------------------------


def test_two_gpus_start_torchrun_with_one_process_each():
    command = local.training_command({"base_model": "gpt2", "batch_size": 4}, 2)
    assert command == [
        sys.executable, "-u", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(local.SCRIPT), "--base_model", '"gpt2"', "--batch_size", "4",
    ]  # fmt: skip


@pytest.mark.parametrize("processes", [0, 1])
def test_one_gpu_or_the_cpu_keeps_the_plain_command(processes):
    command = local.training_command({"batch_size": 4}, processes)
    assert command == [sys.executable, "-u", str(local.SCRIPT), "--batch_size", "4"]


def fake_nvidia_smi(folder, listing: str, code: int = 0):
    """A stand-in for the NVIDIA driver's tool on PATH: it prints what `nvidia-smi -L` would."""
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\nexit {code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return folder


def test_the_worker_counts_its_gpus_or_takes_the_setting(settings, monkeypatch, tmp_path):
    settings.LOCAL_TRAINING_GPUS = 0
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a CPU worker
    assert local.training_processes() == 0
    listing = (
        "GPU 0: NVIDIA A10G (UUID: GPU-5c1e0f5e-0000-0000-0000-000000000000)\n"
        "GPU 1: NVIDIA A10G (UUID: GPU-5c1e0f5e-0000-0000-0000-000000000001)\n"
    )
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path, listing)}{os.pathsep}/usr/bin:/bin")
    assert local.training_processes() == 2
    fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver\n", 9)
    assert local.training_processes() == 0
    settings.LOCAL_TRAINING_GPUS = 4
    assert local.training_processes() == 4
    settings.LOCAL_TRAINING_GPUS = 1
    assert local.training_processes() == 1


@pytest.mark.slow
def test_a_local_job_over_two_processes_trains_one_model(owner, settings, monkeypatch):
    """Two gloo processes on the CPU, when the engine supports it (its start event says world_size)."""
    events = []
    original = local.lifecycle.record_event

    def remember(job_id, event):
        events.append(event)
        return original(job_id, event)

    monkeypatch.setattr(local.lifecycle, "record_event", remember)
    monkeypatch.setattr(local, "training_processes", lambda: 2)
    job = make_job(owner)
    local.run_job(job.pk)

    starts = [event for event in events if event["event"] == "start"]
    if not starts or "world_size" not in starts[0]:
        pytest.skip("the training engine does not train over several processes yet (no world_size)")
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    steps = [event["step"] for event in events if event["event"] == "progress"]
    assert steps == sorted(set(steps))  # no step reported twice


@pytest.mark.slow
def test_a_local_job_sharded_with_fsdp_trains_and_keeps_one_whole_model(owner, settings, monkeypatch):
    """FSDP over two gloo processes through the worker: the start event says so, the model is stored."""
    events = []
    original = local.lifecycle.record_event

    def remember(job_id, event):
        events.append(event)
        return original(job_id, event)

    monkeypatch.setattr(local.lifecycle, "record_event", remember)
    monkeypatch.setattr(local, "training_processes", lambda: 2)
    job = make_job(owner, hyperparameters={**TINY_HYPERPARAMETERS, "max_steps": 8, "sharding": "fsdp"})
    local.run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    [start] = [event for event in events if event["event"] == "start"]
    assert (start["world_size"], start["sharding"]) == (2, "fsdp")
    assert [event["step"] for event in events if event["event"] == "progress"] == list(range(1, 9))
    stored = storage_names(job.model_prefix)
    assert {"model.safetensors", "config.json", "metrics.json"} <= stored, stored


def storage_names(prefix: str) -> set[str]:
    from django.core.files.storage import default_storage

    return set(default_storage.listdir(prefix)[1])


# --- sharding: what the script is told ----------------------------------------------------------------


def test_a_sagemaker_job_that_fits_only_sharded_is_submitted_with_fsdp(owner, moto, requests_sent):
    llama = BaseModel.objects.get(hub_id="meta-llama/Llama-2-7b-hf")
    hyperparameters = {**TINY_HYPERPARAMETERS, "base_model": llama.hub_id, "max_seq_length": 512}
    job = sagemaker_job(
        owner,
        running=False,
        instance_type=InstanceType.objects.get(name="ml.p4d.24xlarge"),
        base_model=llama,
        hyperparameters=hyperparameters,
        max_cost_usd=Decimal("100.00"),
    )
    sm.submit_job(job.pk)
    job.refresh_from_db()

    assert job.sagemaker_status == "InProgress", job.status_message
    [request] = requests_sent
    # 8 × A100 40 GiB: about 157 GiB a GPU under DDP, 35 GiB sharded
    assert request["HyperParameters"]["sharding"] == '"fsdp"'
    assert job.hyperparameters.get("sharding") is None  # the job keeps what its owner asked: auto


def test_a_local_job_is_told_ddp_where_the_whole_state_fits_each_gpu(owner, settings, tmp_path):
    settings.LOCAL_GPU_MEMORY_GIB = 24
    run = local.LocalRun(make_job(owner), workdir=tmp_path)
    assert run._script_hyperparameters(2)["sharding"] == "ddp"
    assert run._script_hyperparameters(1)["sharding"] == "ddp"
