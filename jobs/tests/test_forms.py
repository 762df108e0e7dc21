"""The new-job form: the same hyperparameter rules as finetune.py, presets, who may use what."""

from __future__ import annotations

import pytest
from django.http import QueryDict

from conftest import make_user
from datasets_app.models import Dataset
from jobs import forms, presets
from jobs.forms import CursorForm, JobFilterForm, NewJobForm
from jobs.models import BaseModel, JobStatus, TrainingJob
from jobs.tests.conftest import make_job, make_ready_dataset, scratch_base_model
from training_scripts.hyperparameters import HYPERPARAMETERS, validate_hyperparameters

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(owner):
    return make_ready_dataset(owner)


def form_data(chosen, **overrides) -> dict:
    data = {
        "dataset": chosen.pk,
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
    return {k: v for k, v in data.items() if v is not None}


def test_a_valid_form_gives_the_hyperparameters_finetune_py_would_use(owner, dataset):
    form = NewJobForm(owner, form_data(dataset))

    assert form.is_valid(), form.errors
    expected, errors = validate_hyperparameters(
        {
            "base_model": "scratch:tiny-gpt2",
            "method": "full",
            "epochs": "1",
            "max_steps": "20",
            "batch_size": "4",
            "max_seq_length": "64",
            "packing": True,
            "merge_adapter": True,
        }
    )
    assert not errors
    assert form.cleaned_data["hyperparameters"] == expected
    assert form.cleaned_data["hyperparameters"]["base_model"] == "scratch:tiny-gpt2"
    assert form.job_name() == "Proverbs · Tiny GPT-2 (from scratch)"
    assert form.estimate.steps == 20


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", "0"),
        ("batch_size", "2.5"),
        ("epochs", "abc"),
        ("epochs", "0"),
        ("learning_rate", "2"),
        ("lr_scheduler", "sideways"),
        ("warmup_ratio", "0.95"),
        ("max_seq_length", "8"),
        ("seed", "-1"),
    ],
)
def test_a_bad_value_is_named_with_finetune_pys_own_message(owner, dataset, field, value):
    form = NewJobForm(owner, form_data(dataset, **{field: value}))

    assert not form.is_valid()
    _, errors = validate_hyperparameters({"base_model": "scratch:tiny-gpt2", field: value})
    assert form.errors[field] == [f"{field} {errors[field]}"]
    assert form.estimate is None


def test_rules_across_fields_are_the_scripts_too(owner, dataset):
    form = NewJobForm(owner, form_data(dataset, method="lora"))

    assert not form.is_valid()
    assert "method must be full for scratch models (got 'lora'): LoRA trains" in form.errors["method"][0]


def test_an_unchecked_box_means_false_not_the_default(owner, dataset):
    form = NewJobForm(owner, form_data(dataset, packing=None))

    assert form.is_valid(), form.errors
    assert form.cleaned_data["hyperparameters"]["packing"] is False
    assert HYPERPARAMETERS["packing"].default is True


def test_an_empty_learning_rate_is_chosen_for_the_method(owner, dataset):
    form = NewJobForm(owner, form_data(dataset, learning_rate=""))

    assert form.is_valid(), form.errors
    assert form.cleaned_data["hyperparameters"]["learning_rate"] == 1e-3  # scratch models


def test_only_the_owners_ready_datasets_can_be_chosen(owner, outsider, dataset):
    theirs = make_ready_dataset(outsider, name="Theirs")
    preparing = Dataset.objects.create(owner=owner, name="Half done", status=Dataset.Status.PREPARING)

    for other in (theirs, preparing):
        form = NewJobForm(owner, form_data(dataset, dataset=str(other.pk)))
        assert not form.is_valid()
        assert "dataset" in form.errors
    assert list(NewJobForm(owner).fields["dataset"].queryset) == [dataset]


def test_an_inactive_model_cannot_be_chosen(owner, dataset):
    retired = BaseModel.objects.get(hub_id="gpt2")
    retired.is_active = False
    retired.save()

    form = NewJobForm(owner, form_data(dataset, base_model=str(retired.pk)))

    assert not form.is_valid()
    assert "base_model" in form.errors


def test_sagemaker_is_shown_disabled_with_the_reason_until_it_is_configured(staff, dataset, monkeypatch):
    monkeypatch.setattr(forms, "sagemaker_availability", lambda: (False, forms.SAGEMAKER_NOT_CONFIGURED))
    dataset.owner = staff  # staff see how to set it up; others, that it is not (test_first_visit.py)
    dataset.save()
    form = NewJobForm(staff, form_data(dataset, backend="sagemaker"))

    assert not form.is_valid()
    assert "SAGEMAKER_ROLE_ARN" in form.errors["backend"][0]
    html = str(form["backend"])
    assert (
        'value="sagemaker"' in html
        and "disabled" in html
        and "not configured: set SAGEMAKER_ROLE_ARN" in html
    )


@pytest.fixture
def instance_type():
    from jobs.models import InstanceType

    return InstanceType.objects.create(
        name="ml.test.xlarge",
        vcpus=4,
        memory_gib=16,
        gpu_type="NVIDIA A10G",
        gpu_count=1,
        gpu_memory_gib=24,
        bf16_tflops=100,
        fp32_tflops=30,
        price_per_hour_usd="1.2000",
        price_date="2025-01-01",
    )


def test_sagemaker_needs_an_instance_type_and_then_costs_money(owner, dataset, instance_type, monkeypatch):
    monkeypatch.setattr(forms, "sagemaker_availability", lambda: (True, ""))

    without = NewJobForm(owner, form_data(dataset, backend="sagemaker"))
    assert not without.is_valid()
    assert without.errors["instance_type"] == ["Choose an instance type to train on SageMaker."]

    form = NewJobForm(owner, form_data(dataset, backend="sagemaker", instance_type=str(instance_type.pk)))
    assert form.is_valid(), form.errors
    assert form.estimate.cost_usd > 0


def test_the_local_backend_ignores_an_instance_type(owner, dataset, instance_type):
    form = NewJobForm(owner, form_data(dataset, instance_type=str(instance_type.pk)))

    assert form.is_valid(), form.errors
    assert form.cleaned_data["instance_type"] is None
    assert form.estimate.cost_usd is None


def test_the_sagemaker_check_survives_a_missing_or_broken_backend(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "jobs.backends" and fromlist and "sagemaker" in fromlist:
            raise ImportError("not there yet")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert forms.sagemaker_availability() == (False, forms.SAGEMAKER_NOT_CONFIGURED)


# --- Presets ---


@pytest.mark.parametrize("preset", [name for name, _ in presets.PRESET_CHOICES])
def test_every_preset_is_valid_for_every_model_in_the_catalogue(owner, dataset, preset):
    for base_model in BaseModel.objects.filter(is_active=True):
        values = presets.preset_values(preset, base_model=base_model, dataset=dataset)
        _, errors = validate_hyperparameters({**values, "base_model": base_model.hub_id})
        assert not errors, (preset, base_model.hub_id, errors)
        assert values["max_seq_length"] <= base_model.context_length


def test_the_quick_preset_caps_the_steps(owner, dataset):
    values = presets.preset_values("quick", base_model=scratch_base_model(), dataset=dataset)

    assert values["max_steps"] == 50
    assert values["logging_steps"] == 5


def test_automatic_trains_a_small_dataset_longer_than_a_big_one(owner):
    small = make_ready_dataset(owner, name="Small")
    big = make_ready_dataset(owner, name="Big")
    Dataset.objects.filter(pk=big.pk).update(stats={**big.stats, "tokens": 50_000_000})
    big.refresh_from_db()
    model = BaseModel.objects.get(hub_id="gpt2")

    assert presets.automatic(model, small)["epochs"] == 10
    assert presets.automatic(model, big)["epochs"] == 1


def test_automatic_uses_lora_and_checkpointing_for_big_models(owner, dataset):
    big = BaseModel.objects.get(hub_id="mistralai/Mistral-7B-v0.1")
    small = BaseModel.objects.get(hub_id="distilgpt2")

    assert presets.preset_values("automatic", base_model=big, dataset=dataset)["method"] == "lora"
    assert (
        presets.preset_values("automatic", base_model=big, dataset=dataset)["gradient_checkpointing"] is True
    )
    assert presets.preset_values("automatic", base_model=small, dataset=dataset)["method"] == "full"


def test_automatic_sequence_length_holds_most_samples_whole(owner, dataset):
    Dataset.objects.filter(pk=dataset.pk).update(
        stats={**dataset.stats, "token_lengths": {"p95": 300, "max": 900}}
    )
    dataset.refresh_from_db()

    values = presets.automatic(BaseModel.objects.get(hub_id="gpt2"), dataset)

    assert values["max_seq_length"] == 512
    assert values["batch_size"] * values["gradient_accumulation_steps"] * 512 >= 16384


def test_refilling_applies_the_chosen_preset_but_custom_keeps_the_values(owner, dataset):
    data = QueryDict(mutable=True)
    data.update(form_data(dataset, preset="quick", max_steps="999", batch_size="3"))

    refilled = NewJobForm.refilled(owner, data)
    assert refilled.is_valid(), refilled.errors
    assert refilled.cleaned_data["hyperparameters"]["max_steps"] == 50

    data["preset"] = "custom"
    kept = NewJobForm.refilled(owner, data)
    assert kept.is_valid(), kept.errors
    assert kept.cleaned_data["hyperparameters"]["max_steps"] == 999
    assert kept.cleaned_data["hyperparameters"]["batch_size"] == 3


def test_a_clone_starts_from_the_jobs_own_values(owner, dataset):
    job = make_job(owner, dataset, hyperparameters={"max_steps": 7, "batch_size": 2, "packing": False})

    initial = forms.initial_from_job(job, owner)

    assert initial["dataset"] == dataset
    assert initial["preset"] == "custom"
    assert initial["max_steps"] == "7"
    assert initial["batch_size"] == "2"
    assert initial["packing"] is False
    assert initial["name"] == "Tiny proverbs (copy)"


def test_a_clone_of_a_job_whose_dataset_is_gone_asks_for_another(owner, dataset):
    job = make_job(owner, dataset)
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.FAILED)

    assert forms.initial_from_job(job, owner)["dataset"] is None


# --- Filters and cursors ---


def test_the_list_filter_knows_states_and_active(owner, dataset):
    queued = make_job(owner, dataset, name="q")
    done = make_job(owner, dataset, name="d", status=JobStatus.COMPLETED)
    jobs = TrainingJob.objects.all()

    assert set(JobFilterForm({"status": "active"}).filter(jobs)) == {queued}
    assert set(JobFilterForm({"status": "completed"}).filter(jobs)) == {done}
    assert set(JobFilterForm({"status": "nonsense"}).filter(jobs)) == {queued, done}
    assert JobFilterForm({"page": "x"}).page_number == 1


@pytest.mark.parametrize(("raw", "cursor"), [("12", 12), ("0", 0), ("-3", 0), ("abc", 0), ("", 0)])
def test_a_cursor_is_a_whole_number_or_nothing(raw, cursor):
    assert CursorForm({"after": raw}).cursor == cursor


def test_forms_never_offer_another_users_things(owner, dataset):
    stranger = make_user("eve@example.com")
    make_ready_dataset(stranger, name="Eve's")

    labels = [label for _, label in NewJobForm(owner).fields["dataset"].choices]
    assert labels == [f"Proverbs · 60 samples · {dataset.tokens:,} tokens"]
