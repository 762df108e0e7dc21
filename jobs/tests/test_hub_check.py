"""A Hub model is checked when chosen, and one the worker cannot fetch is refused before launch.

huggingface_hub itself talks to a stand-in Hub on localhost (HF_ENDPOINT), as the worker would to
the real one; nothing leaves this machine.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from jobs import hub_check
from jobs.models import BaseModel, TrainingJob
from jobs.tests.conftest import make_ready_dataset
from jobs.tests.stand_in_hub import HubModel, StandInHub, closed_port_url
from jobs.tests.test_hostile_forms import launch_data
from llmtuner.tests.test_queues import queue_of

pytestmark = pytest.mark.django_db

READER = "hf_reader_token"  # accepted the gated model's licence
STRANGER = "hf_stranger_token"  # a valid token that did not


@pytest.fixture
def hub(monkeypatch):
    stand_in = StandInHub(
        {
            "acme/open-model": HubModel(parameters=124_439_808),
            "acme/gated-model": HubModel(parameters=1_235_814_400, gated=True, readers={READER}),
        },
        tokens={READER, STRANGER},
    )
    monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield stand_in
    stand_in.close()


def catalogue_model(hub_id: str) -> BaseModel:
    return BaseModel.objects.create(
        name=hub_id.split("/")[-1],
        hub_id=hub_id,
        family="test",
        parameters=124_000_000,
        context_length=1024,
        licence="mit",
    )


def ask(client, model: BaseModel, capture) -> tuple[int, str]:
    """The form's htmx requests for the check: the first sends the task (run in-process once the
    request commits) and answers 'pending'; the next poll gets the worker's answer."""
    with capture(execute=True):
        first = client.get(f"/jobs/new/hub-check/?base_model={model.pk}")
    assert 'data-hub-check="pending"' in first.content.decode()
    response = client.get(f"/jobs/new/hub-check/?base_model={model.pk}")
    return response.status_code, response.content.decode()


def launch(client, owner, model: BaseModel):
    dataset = make_ready_dataset(owner)
    return client.post("/jobs/new/", launch_data(dataset, model))


def test_a_public_model_is_found_with_its_size_and_launches(
    owner_client, owner, hub, django_capture_on_commit_callbacks
):
    model = catalogue_model("acme/open-model")

    status, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert status == 286  # the answer is in: the form stops asking
    assert 'data-hub-check="ok"' in html
    assert "acme/open-model is on the Hugging Face Hub (public)." in html
    assert "124,439,808 parameters by the Hub" in html
    assert "Full fine-tuning needs about 1.9 GiB" in html
    response = launch(owner_client, owner, model)
    assert response.status_code == 302
    assert TrainingJob.objects.get().base_model == model


def test_a_gated_model_without_a_token_is_refused_before_launch(
    owner_client, owner, hub, django_capture_on_commit_callbacks
):
    model = catalogue_model("acme/gated-model")

    status, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert 'data-hub-check="refused"' in html
    assert "Cannot launch: acme/gated-model is gated and the worker has no HF_TOKEN" in html
    response = launch(owner_client, owner, model)
    assert response.status_code == 400
    assert "is gated and the worker has no HF_TOKEN" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_a_gated_model_launches_with_a_token_that_accepted_its_licence(
    owner_client, owner, hub, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setenv("HF_TOKEN", READER)  # the worker's environment: the task reads it there
    model = catalogue_model("acme/gated-model")

    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert (
        "acme/gated-model is on the Hugging Face Hub (gated, and the worker&#x27;s HF_TOKEN can read it)"
        in html
    )
    assert "1,235,814,400 parameters" in html
    assert launch(owner_client, owner, model).status_code == 302
    auth_checks = [path for path in hub.requests if path.endswith("/auth-check")]
    assert auth_checks == ["/api/models/acme/gated-model/auth-check"]


def test_a_gated_model_with_a_token_that_did_not_accept_says_to_accept_the_licence(
    owner_client, owner, hub, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setenv("HF_TOKEN", STRANGER)
    model = catalogue_model("acme/gated-model")

    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert "the worker&#x27;s HF_TOKEN cannot read it: accept the model&#x27;s licence" in html
    assert f"{hub.url}/acme/gated-model" in html
    assert launch(owner_client, owner, model).status_code == 400


def test_a_token_the_hub_does_not_know_is_named(
    owner_client, owner, hub, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    model = catalogue_model("acme/open-model")

    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert "refuses the worker&#x27;s HF_TOKEN (invalid or expired)" in html
    assert launch(owner_client, owner, model).status_code == 400


def test_a_model_missing_from_the_hub_is_refused(
    owner_client, owner, hub, django_capture_on_commit_callbacks
):
    model = catalogue_model("acme/no-such-model")

    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert "There is no model acme/no-such-model on the Hugging Face Hub" in html
    response = launch(owner_client, owner, model)
    assert response.status_code == 400
    assert "There is no model acme/no-such-model" in response.content.decode()


def test_without_network_the_launch_is_refused_only_until_the_hub_answers_again(
    owner_client, owner, hub, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setitem(hub_check.KEEP_SECONDS, "unreachable", 1)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())  # connection refused
    model = catalogue_model("acme/open-model")

    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert 'data-hub-check="unreachable"' in html
    assert "The worker cannot reach the Hugging Face Hub" in html
    assert "Launch again once the worker is online" in html
    assert launch(owner_client, owner, model).status_code == 400

    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the network is back
    time.sleep(1.2)
    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)
    assert 'data-hub-check="ok"' in html
    assert launch(owner_client, owner, model).status_code == 302


def test_without_network_a_model_in_the_workers_cache_still_launches(
    owner_client, owner, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    cache_dir = tmp_path / "hub"
    snapshot = cache_dir / "models--acme--open-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = cache_dir / "models--acme--open-model" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    model = catalogue_model("acme/open-model")

    _, html = ask(owner_client, model, django_capture_on_commit_callbacks)

    assert "but it has acme/open-model in its cache" in html
    assert launch(owner_client, owner, model).status_code == 302


def test_while_the_worker_has_not_answered_the_form_keeps_asking_and_does_not_refuse(owner_client, owner):
    model = catalogue_model("acme/open-model")
    hub_check.cache.add(hub_check.pending_key(model.hub_id), 1, 30)  # a check already on its way

    response = owner_client.get(f"/jobs/new/hub-check/?base_model={model.pk}")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-hub-check="pending"' in html
    assert (
        f'hx-get="/jobs/new/hub-check/?base_model={model.pk}" hx-trigger="load delay:1s" hx-target="this"'
        in html
    )
    assert launch(owner_client, owner, model).status_code == 302


def test_the_new_job_form_asks_about_a_hub_model_and_not_about_a_scratch_one(owner_client, owner):
    dataset = make_ready_dataset(owner)
    model = catalogue_model("acme/open-model")
    scratch = BaseModel.objects.get(hub_id="scratch:tiny-gpt2")

    page = owner_client.get(f"/jobs/new/?dataset={dataset.pk}&base_model={model.pk}").content.decode()
    assert f'hx-get="/jobs/new/hub-check/?base_model={model.pk}" hx-trigger="load" hx-target="this"' in page

    page = owner_client.get(f"/jobs/new/?dataset={dataset.pk}&base_model={scratch.pk}").content.decode()
    assert "hub-check" not in page


def test_the_check_needs_a_login_and_an_active_catalogue_model(owner_client):
    model = catalogue_model("acme/open-model")
    assert Client().get(f"/jobs/new/hub-check/?base_model={model.pk}").status_code == 302
    BaseModel.objects.filter(pk=model.pk).update(is_active=False)
    assert owner_client.get(f"/jobs/new/hub-check/?base_model={model.pk}").status_code == 404


def test_the_check_runs_on_the_default_queue():
    assert queue_of("jobs.tasks.check_hub_model") == "default"


@pytest.mark.parametrize(
    "hub_id, checked",
    [
        ("gpt2", True),
        ("Qwen/Qwen2.5-0.5B", True),
        ("scratch:tiny-gpt2", False),
        ("/models/mine", False),
        ("./here", False),
        ("a/b/c", False),
    ],
)
def test_only_hub_ids_are_checked(hub_id, checked):
    assert hub_check.needs_hub(hub_id) is checked


@pytest.mark.django_db(transaction=True)  # the command's task is sent on commit, as in production
def test_a_manifest_entry_on_a_model_the_worker_cannot_fetch_is_refused(owner, hub, tmp_path: Path):
    dataset = make_ready_dataset(owner)
    catalogue_model("acme/gated-model")
    stderr = io.StringIO()
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "jobs:\n"
        f"  - {{name: gated, user: {owner.email}, dataset: {dataset.pk}, base_model: acme/gated-model,"
        " hyperparameters: {max_steps: 5}}\n"
    )

    with pytest.raises(CommandError):
        call_command("submit_jobs", str(manifest), "--dry-run", stderr=stderr)

    assert "base_model: acme/gated-model is gated and the worker has no HF_TOKEN" in stderr.getvalue()
    assert not TrainingJob.objects.exists()


def test_a_cpu_launch_estimated_at_days_says_so_and_suggests_sagemaker_or_a_smaller_model(
    owner_client, owner
):
    dataset = make_ready_dataset(owner)
    gpt2 = BaseModel.objects.get(hub_id="gpt2")

    long_run = owner_client.get("/jobs/new/estimate/", launch_data(dataset, gpt2, max_steps="100000"))
    short_run = owner_client.get("/jobs/new/estimate/", launch_data(dataset, gpt2, max_steps="12"))

    html = long_run.content.decode()
    assert "This would run for days on this machine's CPU (about " in html
    assert "Train on SageMaker" in html and "choose a smaller model" in html
    assert "data-long-run" not in short_run.content.decode()
