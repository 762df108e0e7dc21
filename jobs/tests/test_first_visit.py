"""A first visit that explains itself, on the jobs side: emails, flash messages, labels, manifests,
and SageMaker's instance costs."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from jobs import lifecycle
from jobs.models import JobStatus
from jobs.notifications import send_job_finished_email

pytestmark = pytest.mark.django_db

SITE = "https://tuner.example.com"


def test_the_job_finished_email_carries_the_product_name_and_every_link_is_on_the_site(job, settings):
    settings.SITE_URL = SITE
    lifecycle.transition(job.pk, JobStatus.TRAINING)
    lifecycle.transition(job.pk, JobStatus.COMPLETED)

    assert send_job_finished_email(job.pk)

    (message,) = mail.outbox
    assert message.subject.startswith("[LLM Tuner] Your training job")
    links = re.findall(r"https?://\S+", message.body)
    assert links == [f"{SITE}/jobs/{job.pk}/", f"{SITE}/settings/", f"{SITE}/"]
    assert "LLM Tuner" in message.body


# --- Flash messages that no longer hold -----------------------------------------------------------


def test_stopping_is_said_while_the_job_stops_and_goes_once_it_has_stopped(owner_client, job):
    lifecycle.transition(job.pk, JobStatus.TRAINING)

    page = owner_client.post(f"/jobs/{job.pk}/stop/", follow=True).content.decode()
    assert "Stopping “Tiny proverbs”: " in page
    assert """hx-vals='{"shown": "stopping"}'""" in page

    still_stopping = owner_client.get(f"/jobs/{job.pk}/progress/", {"shown": "stopping"}).content.decode()
    assert 'id="messages"' not in still_stopping  # the message still holds: left alone

    lifecycle.transition(job.pk, JobStatus.STOPPED, "Stopped")
    stopped = owner_client.get(f"/jobs/{job.pk}/progress/", {"shown": "stopping"})
    html = stopped.content.decode()
    assert stopped.status_code == 286
    assert '<div id="messages" hx-swap-oob="true">' in html
    assert "Stopping" not in html.split('id="job-progress"')[0]


def test_a_poll_without_or_with_a_nonsense_shown_status_leaves_the_messages(owner_client, job):
    for query in ({}, {"shown": "exploded"}):
        html = owner_client.get(f"/jobs/{job.pk}/progress/", query).content.decode()
        assert 'id="messages"' not in html


# --- Hyperparameters in words -----------------------------------------------------------------------


def test_hyperparameters_are_labelled_in_words_with_units_and_the_name_as_a_hint(owner_client, owner):
    from jobs.tests.conftest import make_ready_dataset

    make_ready_dataset(owner)
    html = owner_client.get("/jobs/new/").content.decode()

    for name, words in [
        ("max_seq_length", "Sequence length (tokens)"),
        ("epochs", "Epochs (passes over the data)"),
        ("batch_size", "Batch size (sequences per micro-batch)"),
        ("warmup_ratio", "Warm-up (fraction of the steps)"),
        ("eval_steps", "Evaluate every (steps)"),
    ]:
        assert re.search(
            rf'<label for="id_{name}">{re.escape(words)}:</label> <code class="muted"[^>]*>{name}</code>',
            html,
        ), name


def test_a_parameter_without_words_of_its_own_still_reads_as_words():
    from training_scripts.hyperparameters import Param

    assert Param("checkpoint_minutes", "float", 0.0, "…").title == "Checkpoint minutes"
    assert Param("x", "int", 1, "…", label="Every", unit="minutes").title == "Every (minutes)"


# --- LoRA on a scratch model ------------------------------------------------------------------------


def test_lora_on_a_scratch_model_is_refused_on_the_form_with_the_reason(owner_client, owner):
    from jobs.models import TrainingJob
    from jobs.tests.conftest import make_ready_dataset, scratch_base_model
    from jobs.tests.test_hostile_forms import launch_data

    data = launch_data(make_ready_dataset(owner), scratch_base_model(), method="lora")
    response = owner_client.post("/jobs/new/", data)

    assert response.status_code == 400
    assert "method must be full for scratch models (got &#x27;lora&#x27;)" in response.content.decode()
    assert "a scratch model starts from random ones" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_lora_on_a_scratch_model_is_refused_in_a_manifest(owner, tmp_path):
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from jobs.tests.conftest import make_ready_dataset

    dataset = make_ready_dataset(owner)
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "jobs:\n"
        f"  - {{name: tiny, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,"
        " method: lora}\n"
    )
    stderr = io.StringIO()
    with pytest.raises(CommandError):
        call_command("submit_jobs", str(manifest), "--dry-run", stderr=stderr)
    assert "method: must be full for scratch models (got 'lora')" in stderr.getvalue()


# --- The manifest format, documented ------------------------------------------------------------------


def manifest_help() -> str:
    from jobs.management.commands.submit_jobs import Command

    return Command().create_parser("manage.py", "submit_jobs").format_help()


def test_submit_jobs_help_documents_every_field_and_hyperparameter_with_an_example():
    from jobs.batch.reading import FIELDS
    from training_scripts.hyperparameters import HYPERPARAMETERS

    text = manifest_help()
    for field in FIELDS:
        assert f"{field}:" in text or f"`{field}`" in text, field
    for name in HYPERPARAMETERS:
        if name != "base_model":
            assert re.search(rf"^  {name} +\S", text, re.MULTILINE), name
    assert "    - name: support-bot-small" in text  # the example, as written


def test_the_readme_example_is_the_help_example_and_a_manifest_the_reader_accepts(tmp_path):
    from pathlib import Path

    import yaml

    from jobs.batch.reading import FIELDS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"## Many jobs at once: manifests.*?```yaml\n(.*?)```", readme, re.DOTALL)[1]
    help_example = "\n".join(
        line.removeprefix("  ")
        for line in manifest_help().split("one entry per job:\n\n")[1].splitlines()[:20]
    )
    assert example.strip() == help_example.strip()
    entries = yaml.safe_load(example)["jobs"]
    assert len(entries) == 2 and all(set(entry) <= set(FIELDS) for entry in entries)


# --- What each SageMaker instance type costs ------------------------------------------------------------


def test_every_instance_types_cost_can_be_browsed_where_sagemaker_is_not_set_up(owner_client, owner):
    from decimal import Decimal

    from jobs.forms import estimate_for, sagemaker_availability
    from jobs.instance_costs import hyperparameters_for
    from jobs.models import BaseModel, InstanceType
    from jobs.tests.conftest import make_ready_dataset

    assert sagemaker_availability()[0] is False  # this test machine has no SageMaker set up
    dataset = make_ready_dataset(owner)
    gpt2 = BaseModel.objects.get(hub_id="gpt2")

    response = owner_client.get("/jobs/instance-types/", {"dataset": dataset.pk, "base_model": gpt2.pk})

    assert response.status_code == 200
    html = response.content.decode()
    assert "SageMaker is not set up on this server yet." in html
    assert "An administrator of this server can turn it on." in html
    assert "SAGEMAKER_ROLE_ARN" not in html and "data-setup-instructions" not in html
    hyperparameters, errors = hyperparameters_for("automatic", gpt2, dataset)
    assert not errors
    instances = list(InstanceType.objects.filter(is_active=True))
    assert len(instances) >= 3
    for instance in instances:
        cost = estimate_for(dataset, gpt2, hyperparameters, "sagemaker", instance).cost_usd
        row = re.search(rf'<tr data-instance="{re.escape(instance.name)}">(.*?)</tr>', html, re.DOTALL)
        assert row, instance.name
        assert f"<td data-cost>${cost.quantize(Decimal('0.01'))}</td>" in row[1]


def test_staff_see_how_to_set_sagemaker_up_with_its_environment_variables(client, staff):
    from jobs.tests.conftest import make_ready_dataset

    make_ready_dataset(staff)
    client.force_login(staff)

    html = client.get("/jobs/instance-types/").content.decode()

    assert "data-setup-instructions" in html
    for variable in ("SAGEMAKER_ROLE_ARN", "AWS_STORAGE_BUCKET_NAME", "AWS_REGION", "check_sagemaker"):
        assert variable in html, variable
    assert "<tr data-instance=" in html  # the first dataset and model, unless chosen


def test_the_cost_page_needs_a_login_and_never_shows_someone_elses_dataset(owner_client, outsider):
    from django.test import Client

    from jobs.tests.conftest import make_ready_dataset

    theirs = make_ready_dataset(outsider, name="Their secrets")
    assert Client().get("/jobs/instance-types/").status_code == 302

    html = owner_client.get("/jobs/instance-types/", {"dataset": theirs.pk}).content.decode()

    assert "Their secrets" not in html
    assert "Upload a dataset to see what training on it costs" in html


def test_the_new_job_form_links_to_the_instance_costs_and_hides_set_up_from_non_staff(owner_client, owner):
    from jobs.tests.conftest import make_ready_dataset

    make_ready_dataset(owner)
    html = owner_client.get("/jobs/new/").content.decode()

    assert 'href="/jobs/instance-types/" data-instance-costs-link' in html
    assert "SageMaker is not set up on this server yet (an administrator can turn it on)." in html
    assert "SAGEMAKER_ROLE_ARN" not in html
