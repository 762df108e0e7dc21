"""Jobs pages and actions: who may see and do what, and what the owner sees."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from django.core import mail
from django.test import Client

from datasets_app.models import Dataset
from jobs import lifecycle
from jobs.artifacts import UnsafeArchive
from jobs.models import Backend, JobStatus, LogLine, MetricPoint, TrainingJob
from jobs.notifications import send_job_finished_email
from jobs.tests.conftest import make_job, make_ready_dataset, sagemaker_job, scratch_base_model, tar_gz
from jobs.tests.test_hostile_forms import launch_data
from llmtuner import storage

pytestmark = pytest.mark.django_db


def set_state(job: TrainingJob, status: str, **fields) -> TrainingJob:
    TrainingJob.objects.filter(pk=job.pk).update(status=status, **fields)
    job.refresh_from_db()
    return job


def store_model(job: TrainingJob, files: dict[str, bytes]) -> TrainingJob:
    prefix = f"{job.storage_prefix()}/model"
    for name, content in files.items():
        storage.save(f"{prefix}/{name}", io.BytesIO(content))
    log_key = storage.save(f"{job.storage_prefix()}/logs/train.log", io.BytesIO(b"step 1\nstep 2\n"))
    return set_state(job, JobStatus.COMPLETED, model_prefix=prefix, log_key=log_key)


def job_urls(pk: int) -> list[tuple[str, str]]:
    return [
        ("get", f"/jobs/{pk}/"),
        ("get", f"/jobs/{pk}/progress/"),
        ("get", f"/jobs/{pk}/metrics/?after=0"),
        ("get", f"/jobs/{pk}/logs/?after=0"),
        ("get", f"/jobs/{pk}/log/"),
        ("get", f"/jobs/{pk}/stop/"),
        ("post", f"/jobs/{pk}/stop/"),
        ("post", f"/jobs/{pk}/retry/"),
        ("get", f"/jobs/{pk}/clone/"),
        ("get", f"/jobs/{pk}/delete/"),
        ("post", f"/jobs/{pk}/delete/"),
        ("get", f"/jobs/{pk}/download/"),
    ]


# --- Who may see what ---


def test_anonymous_is_sent_to_log_in(client, job):
    for method, url in [("get", "/jobs/"), ("get", "/jobs/new/"), ("post", "/jobs/new/"), *job_urls(job.pk)]:
        response = getattr(client, method)(url)

        assert response.status_code == 302, url
        assert response.url.startswith("/accounts/login/"), url
    assert client.get("/jobs/new/estimate/").status_code == 302


def test_every_job_url_is_404_for_an_outsider_and_changes_nothing(outsider_client, job, settings):
    failed = set_state(make_job(job.owner, job.dataset, name="Failed one"), JobStatus.FAILED)
    completed = store_model(make_job(job.owner, job.dataset, name="Done one"), {"config.json": b"{}"})

    for target in (job, failed, completed):
        for method, url in job_urls(target.pk):
            response = getattr(outsider_client, method)(url)
            assert response.status_code == 404, url

    assert TrainingJob.objects.count() == 3
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.QUEUED
    assert storage.list_keys(completed.storage_prefix() + "/")
    page = outsider_client.get("/jobs/").content.decode()
    assert "Tiny proverbs" not in page and "Done one" not in page


def test_an_outsider_cannot_launch_on_someone_elses_dataset(outsider_client, job):
    response = outsider_client.post(
        "/jobs/new/",
        {"dataset": job.dataset_id, "base_model": job.base_model_id, "backend": "local", "preset": "custom"},
    )

    assert response.status_code == 400
    assert TrainingJob.objects.count() == 1


def test_an_outsider_cannot_estimate_or_preselect_someone_elses_dataset(outsider_client, outsider, job):
    make_ready_dataset(outsider, name="Mallory's own")

    estimate = outsider_client.get(
        "/jobs/new/estimate/",
        {"dataset": job.dataset_id, "base_model": job.base_model_id, "backend": "local", "preset": "quick"},
        headers={"HX-Request": "true"},
    ).content.decode()
    page = outsider_client.get(f"/jobs/new/?dataset={job.dataset_id}").content.decode()

    assert 'data-error-for="dataset"' in estimate and "data-estimate-steps" not in estimate
    assert "Proverbs" not in estimate and "Proverbs" not in page
    assert "Mallory&#x27;s own" in page


# --- List ---


def test_the_list_shows_the_owners_jobs_with_their_figures(owner_client, job_factory):
    running = job_factory(name="Running one")
    set_state(running, JobStatus.TRAINING, step=5, total_steps=20, started_at=running.created_at)
    done = job_factory(name="Finished one")
    set_state(done, JobStatus.COMPLETED, step=20, total_steps=20)

    response = owner_client.get("/jobs/")

    assert response.status_code == 200
    page = response.content.decode()
    assert f'href="/jobs/{running.pk}/"' in page and f'href="/jobs/{done.pk}/"' in page
    assert 'class="badge training"' in page and 'class="badge completed"' in page
    assert 'aria-valuenow="25"' in page  # 5 of 20
    assert "Tiny GPT-2 (from scratch)" in page and "Proverbs" in page
    assert ">free<" in page
    # One partial refreshes the whole list while anything on it runs.
    assert page.count('hx-trigger="every 2s"') == 1
    assert 'hx-get="/jobs/"' in page


def test_the_list_partial_stops_polling_when_nothing_on_the_page_runs(owner_client, job):
    running = owner_client.get("/jobs/?status=active", headers={"HX-Request": "true"})
    assert running.status_code == 200
    assert 'id="job-rows"' in running.content.decode() and "every 2s" in running.content.decode()
    assert "<h1>" not in running.content.decode()

    set_state(job, JobStatus.COMPLETED)
    ended = owner_client.get("/jobs/", headers={"HX-Request": "true"})

    assert ended.status_code == 286
    assert 'id="job-rows"' in ended.content.decode()
    assert "hx-trigger" not in ended.content.decode()


def test_the_list_does_not_query_per_row(owner_client, owner, django_assert_max_num_queries):
    dataset = make_ready_dataset(owner)
    for i in range(30):
        make_job(owner, dataset, name=f"Job {i}")

    with django_assert_max_num_queries(6):
        response = owner_client.get("/jobs/", headers={"HX-Request": "true"})

    assert response.content.decode().count("<tr ") == 30


def test_the_list_filters_by_status(owner_client, job_factory):
    set_state(job_factory(name="Broken"), JobStatus.FAILED)
    job_factory(name="Waiting")

    page = owner_client.get("/jobs/?status=failed").content.decode()
    assert "Broken" in page and "Waiting" not in page

    page = owner_client.get("/jobs/?status=whatever").content.decode()
    assert "Broken" in page and "Waiting" in page


def test_a_new_user_is_told_to_upload_a_dataset_first(owner_client):
    for url in ("/jobs/", "/jobs/new/", "/dashboard/"):
        page = owner_client.get(url).content.decode()
        assert 'href="/datasets/"' in page, url
        assert "Upload" in page, url


# --- New job ---


def test_the_new_job_form_offers_the_catalogue_and_the_estimate(owner_client, owner):
    dataset = make_ready_dataset(owner)

    response = owner_client.get(f"/jobs/new/?dataset={dataset.pk}&preset=quick")

    assert response.status_code == 200
    page = response.content.decode()
    assert f'<option value="{dataset.pk}" selected>Proverbs · 60 samples' in page
    assert "DistilGPT-2 · 82M parameters · 1,024 tokens · Apache-2.0" in page
    assert "Mistral 7B · 7.2B parameters · 32,768 tokens · Apache-2.0 · gated" in page
    assert 'hx-get="/jobs/new/estimate/"' in page and 'hx-trigger="change, input delay:300ms"' in page
    assert 'name="max_steps" value="50"' in page  # the quick preset
    assert "data-estimate-steps>50<" in page
    assert "free (this machine)" in page
    assert "<details" in page and "gradient_accumulation_steps" in page
    assert re.search(r'value="sagemaker"[^>]*disabled', page)
    assert "not set up on this server yet (an administrator can turn it on)" in page
    assert "SAGEMAKER_ROLE_ARN" not in page  # set-up instructions are for staff


def test_launching_saves_a_queued_job_and_hands_it_to_the_backend(
    owner_client, owner, django_capture_on_commit_callbacks
):
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()
    data = {
        "dataset": dataset.pk,
        "base_model": model.pk,
        "backend": "local",
        "preset": "custom",
        "method": "full",
        "epochs": "2",
        "max_steps": "12",
        "batch_size": "4",
        "max_seq_length": "64",
        "packing": "on",
        "merge_adapter": "on",
    }

    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_client.post("/jobs/new/", data)

    job = TrainingJob.objects.get()
    assert response.status_code == 302
    assert response.url == f"/jobs/{job.pk}/"
    assert job.owner == owner
    assert job.status == JobStatus.QUEUED
    assert job.name == "Proverbs · Tiny GPT-2 (from scratch)"
    assert job.hyperparameters["max_steps"] == 12
    assert job.hyperparameters["base_model"] == "scratch:tiny-gpt2"
    assert job.method == "full"
    assert job.estimated_seconds and job.estimated_cost_usd is None
    assert job.celery_task_id
    assert len(callbacks) == 1  # the task is sent once the row is committed


def launch_form(client, owner) -> dict:
    """The new-job form as the page renders it, with its hidden fields, ready to be posted."""
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()
    page = client.get(f"/jobs/new/?dataset={dataset.pk}&base_model={model.pk}&preset=quick").content.decode()
    token = re.search(r'name="submit_token" value="([^"]+)"', page)
    assert token, "the new-job page renders a one-time token"
    return {**launch_data(dataset, model), "submit_token": token[1]}


def test_a_new_job_form_submitted_twice_makes_one_job(
    owner_client, owner, django_capture_on_commit_callbacks
):
    form = launch_form(owner_client, owner)

    with django_capture_on_commit_callbacks() as callbacks:
        first = owner_client.post("/jobs/new/", form)
        again = owner_client.post("/jobs/new/", form, follow=True)

    job = TrainingJob.objects.get()
    assert first.status_code == 302 and first.url == f"/jobs/{job.pk}/"
    assert again.redirect_chain == [(f"/jobs/{job.pk}/", 302)]
    assert "was already launched from this form" in again.content.decode()
    assert len(callbacks) == 1  # handed to its backend once


def test_an_htmx_post_of_the_same_form_twice_makes_one_job(
    owner_client, owner, django_capture_on_commit_callbacks
):
    form = launch_form(owner_client, owner)

    with django_capture_on_commit_callbacks() as callbacks:
        responses = [owner_client.post("/jobs/new/", form, headers={"HX-Request": "true"}) for _ in range(2)]

    job = TrainingJob.objects.get()
    assert [(r.status_code, r["HX-Redirect"]) for r in responses] == [(200, f"/jobs/{job.pk}/")] * 2
    assert len(callbacks) == 1


def test_a_form_sent_again_goes_to_its_job_even_when_it_would_now_be_refused(owner_client, owner):
    form = launch_form(owner_client, owner)
    owner_client.post("/jobs/new/", form)
    job = TrainingJob.objects.get()
    Dataset.objects.filter(pk=form["dataset"]).delete()

    again = owner_client.post("/jobs/new/", form)

    assert again.status_code == 302 and again.url == f"/jobs/{job.pk}/"
    assert TrainingJob.objects.count() == 1


def test_a_refused_form_keeps_its_token_so_the_corrected_one_launches_once(owner_client, owner):
    form = launch_form(owner_client, owner)

    refused = owner_client.post("/jobs/new/", {**form, "batch_size": "0"})
    assert refused.status_code == 400 and f'value="{form["submit_token"]}"' in refused.content.decode()
    for _ in range(2):
        owner_client.post("/jobs/new/", form)

    assert TrainingJob.objects.count() == 1


def test_two_forms_opened_make_two_jobs(owner_client, owner):
    first, second = launch_form(owner_client, owner), launch_form(owner_client, owner)
    assert first["submit_token"] != second["submit_token"]

    owner_client.post("/jobs/new/", first)
    owner_client.post("/jobs/new/", second)

    assert TrainingJob.objects.count() == 2


def test_someone_elses_form_token_never_leads_to_their_job(owner_client, owner, outsider):
    owners = launch_form(owner_client, owner)
    owner_client.post("/jobs/new/", owners)
    outsider_client = Client()
    outsider_client.force_login(outsider)
    outsiders = {**launch_form(outsider_client, outsider), "submit_token": owners["submit_token"]}

    response = outsider_client.post("/jobs/new/", outsiders)

    theirs = TrainingJob.objects.get(owner=outsider)
    assert response.status_code == 302 and response.url == f"/jobs/{theirs.pk}/"
    assert TrainingJob.objects.filter(owner=owner).count() == 1


def test_a_bad_value_is_named_and_nothing_is_launched(owner_client, owner):
    dataset = make_ready_dataset(owner)

    response = owner_client.post(
        "/jobs/new/",
        {"dataset": dataset.pk, "base_model": scratch_base_model().pk, "backend": "local", "batch_size": "0"},
    )

    assert response.status_code == 400
    assert "batch_size must be an integer between 1 and 1024 (got &#x27;0&#x27;)" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_the_estimate_partial_recomputes_as_fields_change(owner_client, owner):
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()
    query = {
        "dataset": dataset.pk,
        "base_model": model.pk,
        "backend": "local",
        "preset": "quick",
        "filled_for": f"quick:{dataset.pk}:{model.pk}",
        "max_steps": "40",
        "batch_size": "4",
        "max_seq_length": "64",
        "packing": "on",
    }

    response = owner_client.get("/jobs/new/estimate/", query, headers={"HX-Request": "true"})

    assert response.status_code == 200
    page = response.content.decode()
    assert page.lstrip().startswith('<section class="card estimate" id="estimate"')
    assert "data-estimate-steps>40<" in page
    assert "data-estimate-time>about " in page
    assert 'id="hyperparameters"' not in page  # a field change does not re-render the fields
    assert "data-estimate-steps>40<" in page  # and the quick preset did not overwrite the value typed


def test_the_estimate_partial_names_what_is_wrong(owner_client, owner):
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()
    query = {
        "dataset": dataset.pk,
        "base_model": model.pk,
        "backend": "local",
        "preset": "custom",
        "filled_for": f"custom:{dataset.pk}:{model.pk}",
        "epochs": "-1",
    }

    page = owner_client.get("/jobs/new/estimate/", query, headers={"HX-Request": "true"}).content.decode()

    assert 'data-error-for="epochs"' in page
    assert "epochs must be a number greater than 0 and at most 1000" in page
    assert "data-estimate-steps" not in page


@pytest.mark.parametrize("changed", ["preset", "dataset", "base_model"])
def test_a_new_preset_dataset_or_model_fills_the_fields_in_out_of_band(owner_client, owner, changed):
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()
    before = {"preset": "balanced", "dataset": dataset.pk, "base_model": model.pk}
    before[changed] = {"preset": "balanced", "dataset": 0, "base_model": 0}[changed]
    query = {
        "dataset": dataset.pk,
        "base_model": model.pk,
        "backend": "local",
        "preset": "quick",
        "max_steps": "999",
        "filled_for": f"{before['preset']}:{before['dataset']}:{before['base_model']}",
    }

    page = owner_client.get("/jobs/new/estimate/", query, headers={"HX-Request": "true"}).content.decode()

    assert '<div id="hyperparameters" hx-swap-oob="true">' in page
    assert 'name="max_steps" value="50"' in page
    assert f'name="filled_for" value="quick:{dataset.pk}:{model.pk}"' in page
    assert "data-estimate-steps>50<" in page


def test_custom_keeps_the_values_when_the_model_changes(owner_client, owner):
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()
    query = {
        "dataset": dataset.pk,
        "base_model": model.pk,
        "backend": "local",
        "preset": "custom",
        "max_steps": "999",
        "filled_for": f"custom:{dataset.pk}:0",
    }

    page = owner_client.get("/jobs/new/estimate/", query, headers={"HX-Request": "true"}).content.decode()

    assert 'name="max_steps" value="999"' in page
    assert f'name="filled_for" value="custom:{dataset.pk}:{model.pk}"' in page


def test_the_new_job_page_says_what_its_values_were_filled_in_for(owner_client, owner):
    dataset = make_ready_dataset(owner)

    page = owner_client.get(f"/jobs/new/?dataset={dataset.pk}&preset=quick").content.decode()

    assert f'name="filled_for" value="quick:{dataset.pk}:{scratch_base_model().pk}"' in page


def test_without_javascript_a_preset_is_applied_by_a_plain_get(owner_client, owner):
    dataset = make_ready_dataset(owner)

    page = owner_client.get(
        "/jobs/new/",
        {
            "dataset": dataset.pk,
            "base_model": scratch_base_model().pk,
            "preset": "quick",
            "apply_preset": "1",
        },
    ).content.decode()

    assert 'name="max_steps" value="50"' in page


# --- Job page ---


def test_the_job_page_says_how_the_run_spread_over_processes(owner_client, job):
    assert "data-processes" not in owner_client.get(f"/jobs/{job.pk}/").content.decode()  # one process

    TrainingJob.objects.filter(pk=job.pk).update(run_facts={"world_size": 8, "sharding": "fsdp"})
    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "<span data-processes>trained on 8 processes, FSDP, sharded</span>" in page

    TrainingJob.objects.filter(pk=job.pk).update(run_facts={"world_size": 2})  # before sharding was kept
    assert "trained on 2 processes, DDP<" in owner_client.get(f"/jobs/{job.pk}/").content.decode()


def test_the_job_page_shows_the_header_hyperparameters_log_and_polling_parts(owner_client, job):
    lifecycle.append_log(job.pk, ["Preparing", "Running finetune.py"])

    response = owner_client.get(f"/jobs/{job.pk}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "<h1>Tiny proverbs</h1>" in page
    assert 'class="badge queued"' in page
    assert "Tiny GPT-2 (from scratch)" in page and f'href="/datasets/{job.dataset_id}/"' in page
    assert 'data-hp="max_steps">30<' in page and 'data-hp="packing">true<' in page
    # labelled in words as on the form, with the name a manifest uses beside it
    assert 'Sequence length (tokens) <code class="muted">max_seq_length</code>' in page
    assert f'hx-get="/jobs/{job.pk}/progress/" hx-trigger="every 2s"' in page
    assert f'hx-get="/jobs/{job.pk}/logs/?after=2" hx-trigger="every 2s"' in page
    assert f'data-url="/jobs/{job.pk}/metrics/"' in page
    assert '<div data-seq="2">Running finetune.py</div>' in page
    assert "We email you at alice@example.com when this job ends" in page


def test_a_final_job_page_polls_nothing(owner_client, job):
    set_state(job, JobStatus.FAILED, status_message="The training script exited with code 1")

    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()

    assert "every 2s" not in page
    assert "The training script exited with code 1" in page
    assert (
        'data-action="retry"' in page and 'data-action="delete"' in page and 'data-action="stop"' not in page
    )


def test_the_finished_email_links_to_the_job_page(owner_client, job, settings):
    settings.SITE_URL = "https://tuner.example.com"
    lifecycle.transition(job.pk, JobStatus.FAILED, "Out of memory")

    assert send_job_finished_email(job.pk)

    url = re.search(r"https://tuner\.example\.com(/\S+)", mail.outbox[0].body).group(1)
    assert url == f"/jobs/{job.pk}/"
    response = owner_client.get(url)
    assert response.status_code == 200
    assert "Out of memory" in response.content.decode()


# --- Actions ---


def test_stop_asks_first_without_javascript_then_stops_a_queued_job_at_once(owner_client, job):
    confirm = owner_client.get(f"/jobs/{job.pk}/stop/")
    assert confirm.status_code == 200
    assert f'action="/jobs/{job.pk}/stop/"' in confirm.content.decode()
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.QUEUED

    response = owner_client.post(f"/jobs/{job.pk}/stop/")

    assert response.status_code == 302
    assert response.url == f"/jobs/{job.pk}/"
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.STOPPED


def test_stop_with_htmx_asks_in_the_browser_and_returns_the_progress_card(owner_client, job):
    set_state(job, JobStatus.TRAINING, step=3, total_steps=30)
    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'hx-post="/jobs/{job.pk}/stop/"' in page and "hx-confirm=" in page

    response = owner_client.post(f"/jobs/{job.pk}/stop/", headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert 'data-status="stopping"' in response.content.decode()
    assert "every 2s" in response.content.decode()  # it keeps polling until the worker has stopped
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING and job.stop_requested_at


def test_stopping_an_ended_job_changes_nothing(owner_client, job):
    set_state(job, JobStatus.COMPLETED)

    assert owner_client.get(f"/jobs/{job.pk}/stop/").status_code == 302
    owner_client.post(f"/jobs/{job.pk}/stop/")

    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.COMPLETED


def test_stop_needs_a_csrf_token(client, owner, job):
    client = type(client)(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.post(f"/jobs/{job.pk}/stop/").status_code == 403
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_retry_makes_a_new_queued_attempt_with_the_same_settings(
    owner_client, job, django_capture_on_commit_callbacks
):
    set_state(job, JobStatus.FAILED, hyperparameters={**job.hyperparameters, "seed": 7})

    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_client.post(f"/jobs/{job.pk}/retry/")

    new = TrainingJob.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302 and response.url == f"/jobs/{new.pk}/"
    assert new.status == JobStatus.QUEUED
    assert new.attempt == 2
    assert new.hyperparameters == job.hyperparameters
    assert (new.dataset, new.base_model, new.backend, new.name) == (
        job.dataset,
        job.base_model,
        "local",
        job.name,
    )
    assert len(callbacks) == 1
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.FAILED


def test_a_retry_of_the_same_attempt_makes_one_next_attempt(
    owner_client, job, django_capture_on_commit_callbacks
):
    set_state(job, JobStatus.FAILED)

    with django_capture_on_commit_callbacks() as callbacks:
        responses = [owner_client.post(f"/jobs/{job.pk}/retry/", follow=True) for _ in range(3)]

    new = TrainingJob.objects.exclude(pk=job.pk).get()
    assert new.attempt == 2
    assert [r.redirect_chain for r in responses] == [[(f"/jobs/{new.pk}/", 302)]] * 3
    assert f"Attempt 2 of “{job.name}” is queued." in responses[0].content.decode()
    assert f"“{job.name}” was retried already: this is attempt 2." in responses[2].content.decode()
    assert len(callbacks) == 1


def test_an_htmx_retry_clicked_twice_sends_both_to_the_one_next_attempt(owner_client, job):
    set_state(job, JobStatus.STOPPED)

    htmx = {"HX-Request": "true"}
    responses = [owner_client.post(f"/jobs/{job.pk}/retry/", headers=htmx) for _ in range(2)]

    new = TrainingJob.objects.exclude(pk=job.pk).get()
    assert [r["HX-Redirect"] for r in responses] == [f"/jobs/{new.pk}/"] * 2


def test_a_failed_second_attempt_retries_into_a_third(owner_client, job):
    set_state(job, JobStatus.FAILED)
    owner_client.post(f"/jobs/{job.pk}/retry/")
    second = set_state(TrainingJob.objects.get(attempt=2), JobStatus.FAILED)

    for _ in range(2):
        response = owner_client.post(f"/jobs/{second.pk}/retry/")

    third = TrainingJob.objects.get(attempt=3)
    assert response.url == f"/jobs/{third.pk}/"
    assert TrainingJob.objects.count() == 3


def test_only_a_failed_or_stopped_job_can_be_retried(owner_client, job):
    for status in (JobStatus.QUEUED, JobStatus.TRAINING, JobStatus.COMPLETED):
        set_state(job, status)
        response = owner_client.post(f"/jobs/{job.pk}/retry/")
        assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"
    assert TrainingJob.objects.count() == 1


def test_retry_refuses_when_the_dataset_is_gone(owner_client, job):
    set_state(job, JobStatus.STOPPED)
    Dataset.objects.filter(pk=job.dataset_id).delete()

    response = owner_client.post(f"/jobs/{job.pk}/retry/", follow=True)

    assert "Its dataset was deleted" in response.content.decode()
    assert TrainingJob.objects.count() == 1


def test_clone_opens_a_prefilled_new_job_form(owner_client, job):
    response = owner_client.get(f"/jobs/{job.pk}/clone/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Clone “Tiny proverbs”" in page
    assert 'name="name" value="Tiny proverbs (copy)"' in page
    assert 'name="max_steps" value="30"' in page and 'name="learning_rate" value="0.003"' in page
    assert 'value="custom" id="id_preset_4" checked' in page
    assert TrainingJob.objects.count() == 1


def test_delete_removes_a_final_job_with_its_stored_model_and_log(owner_client, job):
    store_model(job, {"config.json": b"{}", "model.safetensors": b"weights"})
    MetricPoint.objects.create(job=job, step=1, loss=2.0)
    other = make_job(job.owner, job.dataset, name="Keep me")
    storage.save(f"{other.storage_prefix()}/model/config.json", io.BytesIO(b"{}"))

    assert owner_client.get(f"/jobs/{job.pk}/delete/").status_code == 200
    response = owner_client.post(f"/jobs/{job.pk}/delete/")

    assert response.status_code == 302 and response.url == "/jobs/"
    assert not TrainingJob.objects.filter(pk=job.pk).exists()
    assert not MetricPoint.objects.exists()
    assert storage.list_keys(job.storage_prefix() + "/") == []
    assert storage.list_keys(other.storage_prefix() + "/") == [f"{other.storage_prefix()}/model/config.json"]


def test_a_running_job_cannot_be_deleted(owner_client, job):
    set_state(job, JobStatus.TRAINING)

    response = owner_client.post(f"/jobs/{job.pk}/delete/", follow=True)

    assert "stop it first" in response.content.decode()
    assert TrainingJob.objects.filter(pk=job.pk).exists()


@pytest.mark.parametrize("backend", [Backend.LOCAL, Backend.SAGEMAKER])
def test_download_streams_the_tuned_model_as_a_zip(owner_client, job, backend, request):
    weights = bytes(range(256)) * 4096
    files = {"config.json": b'{"n_layer": 2}', "model.safetensors": weights, "tokenizer/vocab.json": b"{}"}
    if backend == Backend.SAGEMAKER:  # the same folder, as SageMaker's model.tar.gz
        archive = tar_gz({f"./{name}": data for name, data in files.items()})
        job = sagemaker_job(job.owner, request.getfixturevalue("sagemaker_output"), archive)
    else:
        store_model(job, files)

    response = owner_client.get(f"/jobs/{job.pk}/download/")

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="tiny-proverbs.zip"'
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == [
        "tiny-proverbs/README.md",
        "tiny-proverbs/config.json",
        "tiny-proverbs/model.safetensors",
        "tiny-proverbs/tokenizer/vocab.json",
    ]
    assert archive.read("tiny-proverbs/model.safetensors") == weights
    assert archive.getinfo("tiny-proverbs/model.safetensors").compress_type == zipfile.ZIP_STORED
    assert archive.getinfo("tiny-proverbs/config.json").compress_type == zipfile.ZIP_DEFLATED


def test_the_zip_is_produced_in_chunks_not_built_whole(owner_client, job):
    store_model(job, {"model.safetensors": b"x" * (3 * 1024 * 1024 + 5)})

    response = owner_client.get(f"/jobs/{job.pk}/download/")
    chunks = list(response.streaming_content)

    assert len(chunks) > 3
    assert max(len(chunk) for chunk in chunks) <= 1024 * 1024 + 64 * 1024


def test_a_sagemaker_job_whose_archive_is_gone_has_nothing_to_download(owner_client, owner, sagemaker_output):
    job = sagemaker_job(owner, sagemaker_output, None, key="gone/model.tar.gz")

    assert owner_client.get(f"/jobs/{job.pk}/download/").status_code == 404


def test_a_sagemaker_archive_with_a_member_outside_the_folder_is_never_zipped(
    owner_client, owner, sagemaker_output
):
    archive = tar_gz({"config.json": b"{}", "../../outside.txt": b"gotcha"})
    job = sagemaker_job(owner, sagemaker_output, archive)

    response = owner_client.get(f"/jobs/{job.pk}/download/")

    with pytest.raises(UnsafeArchive):
        b"".join(response.streaming_content)


def test_only_a_completed_job_has_a_model_to_download(owner_client, job):
    for status in (JobStatus.QUEUED, JobStatus.TRAINING, JobStatus.FAILED, JobStatus.STOPPED):
        set_state(job, status)
        assert owner_client.get(f"/jobs/{job.pk}/download/").status_code == 404


def test_the_full_log_can_be_downloaded_once_stored(owner_client, job):
    assert owner_client.get(f"/jobs/{job.pk}/log/").status_code == 404
    store_model(job, {"config.json": b"{}"})

    response = owner_client.get(f"/jobs/{job.pk}/log/")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"step 1\nstep 2\n"


def test_the_dashboard_lists_recent_jobs_and_datasets(owner_client, job):
    LogLine.objects.create(job=job, seq=1, text="x")

    page = owner_client.get("/dashboard/").content.decode()

    assert f'href="/jobs/{job.pk}/"' in page
    assert f'href="/jobs/new/?dataset={job.dataset_id}"' in page
    assert 'href="/jobs/"' in page  # in the navigation too
