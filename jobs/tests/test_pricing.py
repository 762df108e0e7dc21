"""The instance catalogue, costs, monthly budgets and estimate calibration."""

from __future__ import annotations

import gzip
import importlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import botocore
import pytest

from accounts.models import get_profile
from jobs import pricing
from jobs.models import Backend, InstanceType, JobStatus, TrainingJob
from jobs.tests.conftest import make_job

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SEED = importlib.import_module("jobs.migrations.0005_seed_instance_types")


def training_instance_types() -> set[str]:
    """The TrainingInstanceType enum of the SageMaker API model that botocore ships."""
    path = Path(botocore.__file__).parent / "data" / "sagemaker" / "2017-07-24" / "service-2.json.gz"
    with gzip.open(path) as model:
        return set(json.load(model)["shapes"]["TrainingInstanceType"]["enum"])


# --- the catalogue ------------------------------------------------------------------------------------------


def test_every_seeded_instance_type_is_a_sagemaker_training_instance_type():
    valid = training_instance_types()
    seeded = {row[0] for row in SEED.INSTANCE_TYPES}
    assert seeded <= valid, seeded - valid
    # Names that look plausible but are not training instance types.
    assert "ml.g5.large" not in valid and "ml.c5.large" not in valid


def test_the_migration_seeded_the_catalogue_with_prices_and_their_date():
    names = set(InstanceType.objects.values_list("name", flat=True))
    assert {row[0] for row in SEED.INSTANCE_TYPES} <= names
    g5 = InstanceType.objects.get(name="ml.g5.xlarge")
    assert (g5.gpu_count, g5.gpu_memory_gib, g5.gpu_type) == (1, 24, "NVIDIA A10G")
    assert g5.price_region == "us-east-1" and g5.price_date.isoformat() == "2025-01-01"
    assert g5.price_per_hour_usd == Decimal("1.4080")
    for instance_type in InstanceType.objects.filter(name__in=names):
        assert instance_type.price_per_hour_usd > 0
        assert instance_type.fp32_tflops > 0
        assert instance_type.has_gpu == (instance_type.bf16_tflops > 0)


def test_instance_families():
    assert pricing.instance_family("ml.g5.12xlarge") == "g5"
    assert pricing.instance_family("ml.p4d.24xlarge") == "p4d"
    assert pricing.instance_family(None) == "local"


# --- costs --------------------------------------------------------------------------------------------------


def g5() -> InstanceType:
    return InstanceType.objects.get(name="ml.g5.xlarge")


def test_a_running_job_costs_its_time_so_far_at_the_hourly_price_per_instance():
    started = NOW - timedelta(minutes=30)
    assert pricing.running_cost(g5(), 1, started, NOW) == Decimal("0.7040")
    assert pricing.running_cost(g5(), 2, started, NOW) == Decimal("1.4080")
    assert pricing.running_cost(g5(), 1, None, NOW) == 0


def test_a_finished_job_costs_its_billable_seconds():
    assert pricing.cost_for_seconds(3600, g5(), 1) == Decimal("1.4080")
    assert pricing.cost_for_seconds(1, g5(), 1) == Decimal("0.0004")


def test_max_runtime_from_a_cap_rounds_down_and_respects_the_ceilings():
    assert pricing.max_runtime_seconds(Decimal("1.408"), g5(), 1, ceiling=10**9) == 3600
    assert pricing.max_runtime_seconds(Decimal("1.407"), g5(), 1, ceiling=10**9) == 3597
    assert pricing.max_runtime_seconds(Decimal("1000"), g5(), 1, ceiling=7200) == 7200
    assert pricing.max_runtime_seconds(Decimal("100000"), g5(), 1, ceiling=10**9) == 28 * 24 * 3600
    assert pricing.cap_for_seconds(300, g5()) == Decimal("0.12")


def test_spot_savings_are_what_the_unbilled_training_time_would_have_cost(owner):
    job = make_job(owner, backend=Backend.SAGEMAKER, instance_type=g5(), use_spot=True)
    job.cost_usd, job.billable_seconds, job.training_seconds = Decimal("0.3520"), 900, 3600
    assert job.spot_savings_usd == Decimal("1.0560")
    job.use_spot = False
    assert job.spot_savings_usd is None


# --- budgets ------------------------------------------------------------------------------------------------


def cloud_job(owner, dataset=None, **fields):
    defaults = {"backend": Backend.SAGEMAKER, "instance_type": g5()}
    return make_job(owner, dataset, **{**defaults, **fields})


def set_budget(user, amount: str) -> None:
    profile = get_profile(user)
    profile.monthly_budget_usd = Decimal(amount)
    profile.save()


def test_month_to_date_spend_counts_this_months_cloud_jobs_only(owner, outsider):
    job = cloud_job(owner, status=JobStatus.COMPLETED, cost_usd=Decimal("3.5"))
    cloud_job(owner, job.dataset, status=JobStatus.TRAINING, cost_usd=Decimal("1.25"))
    old = cloud_job(owner, job.dataset, status=JobStatus.COMPLETED, cost_usd=Decimal("100"))
    old.__class__.objects.filter(pk=old.pk).update(created_at=pricing.month_start() - timedelta(seconds=1))
    make_job(owner, job.dataset, cost_usd=Decimal("7"))  # a local job costs nothing, whatever the row says
    cloud_job(outsider, status=JobStatus.COMPLETED, cost_usd=Decimal("9"))
    assert pricing.month_to_date_spend(owner) == Decimal("4.7500")


def test_running_jobs_reserve_what_they_are_still_expected_to_cost(owner):
    job = cloud_job(owner, status=JobStatus.TRAINING, estimated_cost_usd=Decimal("5"), cost_usd=Decimal("2"))
    cloud_job(owner, job.dataset, status=JobStatus.QUEUED, estimated_cost_usd=None, max_cost_usd=Decimal("4"))
    cloud_job(owner, job.dataset, status=JobStatus.COMPLETED, estimated_cost_usd=Decimal("50"))
    assert pricing.reserved_spend(owner) == Decimal("7.0000")
    assert pricing.reserved_spend(owner, exclude_job_id=job.pk) == Decimal("4.0000")


def test_a_launch_within_the_budget_left_is_allowed(owner):
    set_budget(owner, "50")
    cloud_job(owner, status=JobStatus.COMPLETED, cost_usd=Decimal("45"))
    assert pricing.check_budget(owner, Decimal("5")) is None
    assert pricing.check_budget(owner, None) is None


def test_a_launch_over_the_budget_left_is_refused_with_the_figures(owner):
    set_budget(owner, "50")
    job = cloud_job(owner, status=JobStatus.COMPLETED, cost_usd=Decimal("45.70"))
    cloud_job(owner, job.dataset, status=JobStatus.TRAINING, estimated_cost_usd=Decimal("3"))
    message = pricing.check_budget(owner, Decimal("4.2"))
    assert message == (
        "This job is estimated to cost $4.20, but only $1.30 is left of your $50.00 monthly budget: "
        "$45.70 has been spent this month and $3.00 is reserved by jobs still running. "
        "Choose a smaller job or a cheaper instance type, or ask an operator to raise your budget."
    )


def test_a_spent_budget_says_nothing_is_left(owner):
    set_budget(owner, "10")
    cloud_job(owner, status=JobStatus.COMPLETED, cost_usd=Decimal("12"))
    assert "but nothing is left of your $10.00 monthly budget" in pricing.check_budget(owner, Decimal("0.01"))


def test_the_default_budget_comes_from_settings(owner, settings):
    assert pricing.monthly_budget(owner) == Decimal(settings.DEFAULT_MONTHLY_BUDGET_USD)


# --- the launch form refuses what the budget cannot pay ----------------------------------------------------


def launch_on_sagemaker(client, dataset, instance_type) -> dict:
    from jobs.tests.conftest import scratch_base_model

    return {
        "dataset": dataset.pk,
        "base_model": scratch_base_model().pk,
        "backend": "sagemaker",
        "instance_type": instance_type.pk,
        "preset": "custom",
        "method": "full",
        "epochs": "1",
        "max_steps": "20000",
        "batch_size": "4",
        "max_seq_length": "64",
        "packing": "on",
        "merge_adapter": "on",
    }


@pytest.fixture
def sagemaker_on(settings):
    settings.SAGEMAKER_ROLE_ARN = "arn:aws:iam::123456789012:role/llmtuner-sagemaker"
    settings.SAGEMAKER_BUCKET = "llmtuner-jobs"


def test_a_launch_over_budget_is_refused_with_the_figures_and_nothing_runs(owner, owner_client, sagemaker_on):
    set_budget(owner, "0.05")
    dataset = make_job(owner).dataset
    response = owner_client.post("/jobs/new/", launch_on_sagemaker(owner_client, dataset, g5()))
    assert response.status_code == 400
    page = response.content.decode()
    assert "This job is estimated to cost $" in page
    assert "of your $0.05 monthly budget" in page
    assert not TrainingJob.objects.filter(backend=Backend.SAGEMAKER).exists()


def test_a_launch_within_budget_is_queued_for_sagemaker(
    owner, owner_client, sagemaker_on, django_capture_on_commit_callbacks
):
    set_budget(owner, "500")
    dataset = make_job(owner).dataset
    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_client.post("/jobs/new/", launch_on_sagemaker(owner_client, dataset, g5()))
    assert response.status_code == 302
    job = TrainingJob.objects.get(backend=Backend.SAGEMAKER)
    assert job.status == JobStatus.QUEUED and job.estimated_cost_usd > 0
    assert len(callbacks) == 1  # submit_sagemaker_job, once the row is committed


def test_the_live_estimate_shows_the_budget_refusal(owner, owner_client, sagemaker_on):
    set_budget(owner, "0.05")
    dataset = make_job(owner).dataset
    response = owner_client.get("/jobs/new/estimate/", launch_on_sagemaker(owner_client, dataset, g5()))
    assert response.status_code == 200
    assert "This job is estimated to cost $" in response.content.decode()
    assert "of your $0.05 monthly budget" in response.content.decode()


def test_a_cost_cap_and_spot_from_the_form_reach_the_job(
    owner, owner_client, sagemaker_on, django_capture_on_commit_callbacks
):
    set_budget(owner, "500")
    dataset = make_job(owner).dataset
    data = {**launch_on_sagemaker(owner_client, dataset, g5()), "max_cost_usd": "400", "use_spot": "on"}
    with django_capture_on_commit_callbacks():
        response = owner_client.post("/jobs/new/", data)
    assert response.status_code == 302
    job = TrainingJob.objects.get(backend=Backend.SAGEMAKER)
    assert job.max_cost_usd == Decimal("400")
    assert job.use_spot is True


def test_a_cost_cap_below_the_estimate_is_refused_with_the_figures(owner, owner_client, sagemaker_on):
    set_budget(owner, "500")
    dataset = make_job(owner).dataset
    data = {**launch_on_sagemaker(owner_client, dataset, g5()), "max_cost_usd": "0.01"}
    response = owner_client.post("/jobs/new/", data)
    assert response.status_code == 400
    assert "a $0.01 cap would stop the job before it finishes" in response.content.decode()
    assert not TrainingJob.objects.filter(backend=Backend.SAGEMAKER).exists()
