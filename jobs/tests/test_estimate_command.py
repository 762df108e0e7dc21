"""manage.py estimate: time and cost of a dataset, model and instance type, as the launch form estimates."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from datasets_app.models import Dataset
from jobs import presets
from jobs.forms import estimate_for
from jobs.models import BaseModel, InstanceType
from jobs.tests.conftest import make_ready_dataset
from training_scripts.hyperparameters import validate_hyperparameters

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command("estimate", *[str(arg) for arg in args], stdout=out)
    return out.getvalue()


@pytest.fixture
def dataset(owner):
    return make_ready_dataset(owner)


def expected(dataset, model, preset="automatic", backend="sagemaker", instance=None, **overrides):
    values = presets.preset_values(preset, base_model=model, dataset=dataset) | overrides
    clean, errors = validate_hyperparameters({**values, "base_model": model.hub_id})
    assert not errors
    return estimate_for(dataset, model, clean, backend, instance)


def test_one_instance_type_gives_the_launch_forms_estimate(dataset):
    gpt2 = BaseModel.objects.get(hub_id="gpt2")
    g5 = InstanceType.objects.get(name="ml.g5.xlarge")

    result = json.loads(run("--dataset", dataset.pk, "--model", "gpt2", "--instance-type", g5.name, "--json"))

    estimate = expected(dataset, gpt2, instance=g5)
    assert result["estimates"] == [
        {
            "backend": "sagemaker",
            "instance_type": "ml.g5.xlarge",
            "price_per_hour_usd": str(g5.price_per_hour_usd),
            "steps": estimate.steps,
            "train_tokens": estimate.train_tokens,
            "seconds": estimate.seconds,
            "duration": estimate.duration,
            "slow_seconds": estimate.slow_seconds,
            "basis": "from the model's size",
            "phases": estimate.phases,
            "world_size": 1,
            "effective_batch": estimate.effective_batch,
            "cost_usd": str(estimate.cost_usd),
        }
    ]
    assert result["model"] == "gpt2" and result["preset"] == "automatic"


def test_without_an_instance_type_every_active_one_is_priced_cheapest_first(dataset):
    InstanceType.objects.filter(name="ml.p4d.24xlarge").update(is_active=False)

    result = json.loads(run("--dataset", dataset.pk, "--model", "GPT-2", "--json"))

    names = [row["instance_type"] for row in result["estimates"]]
    assert set(names) == set(InstanceType.objects.filter(is_active=True).values_list("name", flat=True))
    costs = [float(row["cost_usd"]) for row in result["estimates"]]
    assert costs == sorted(costs) and "ml.p4d.24xlarge" not in names


def test_the_table_says_what_was_estimated(dataset):
    out = run(
        "--dataset", dataset.pk, "--model", "gpt2", "--instance-type", "ml.g4dn.xlarge", "--preset", "quick"
    )

    estimate = expected(
        dataset,
        BaseModel.objects.get(hub_id="gpt2"),
        "quick",
        instance=InstanceType.objects.get(name="ml.g4dn.xlarge"),
    )
    assert f"Dataset {dataset.pk} “Proverbs”: 60 samples" in out
    assert "Preset quick:" in out and "max_steps 50" in out
    row = next(line for line in out.splitlines() if line.startswith("ml.g4dn.xlarge"))
    assert "1 × NVIDIA T4" in row and estimate.duration in row and f"{estimate.steps:,}" in row


def test_this_machine_is_free_and_hyperparameters_can_be_set(dataset):
    model = BaseModel.objects.get(hub_id="scratch:tiny-gpt2")

    out = run("--dataset", dataset.pk, "--model", model.hub_id, "--backend", "local", "--hp", "max_steps=77")

    row = next(line for line in out.splitlines() if line.startswith("this machine"))
    estimate = expected(dataset, model, backend="local", max_steps="77")
    assert estimate.steps == 77 and " 77 " in row and "free" in row and estimate.duration in row


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gpt-7"], "no model in the catalogue is called 'gpt-7'"),
        (["--model", "gpt2", "--instance-type", "ml.z9.huge"], "unknown instance type 'ml.z9.huge'"),
        (["--model", "gpt2", "--hp", "batch_size=0"], "batch_size: must be an integer between 1 and 1024"),
        (["--model", "gpt2", "--hp", "epoch=3"], "give NAME=VALUE with a known hyperparameter name"),
        (["--model", "gpt2", "--backend", "local", "--instance-type", "ml.g5.xlarge"], "not allowed with"),
    ],
)
def test_bad_arguments_are_named(dataset, args, message):
    with pytest.raises(CommandError, match=message):
        run("--dataset", dataset.pk, *args)


def test_a_missing_or_unready_dataset_is_an_error(dataset):
    with pytest.raises(CommandError, match="no dataset has the id 9999"):
        run("--dataset", 9999, "--model", "gpt2")
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.PREPARING)
    with pytest.raises(CommandError, match=rf"dataset {dataset.pk} is not ready \(Preparing\)"):
        run("--dataset", dataset.pk, "--model", "gpt2")
