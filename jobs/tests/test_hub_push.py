"""Push to the Hugging Face Hub: the token saved encrypted in the settings, the push from the job
page in a task, against a stand-in Hub on localhost (jobs/tests/hub_stand_in.py)."""

from __future__ import annotations

import io
from datetime import timedelta
from unittest.mock import ANY

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.utils import timezone

from accounts.models import HubToken, save_hub_token
from jobs import hub_push, tasks
from jobs.models import Backend, HubPush, HubPushStatus
from jobs.tests.conftest import completed, make_job, sagemaker_job, tar_gz
from jobs.tests.stand_in_hub import StandInHub, closed_port_url
from llmtuner import storage

pytestmark = pytest.mark.django_db

TOKEN = "hf_WriteTokenOfAlice1234567890"
READ_TOKEN = "hf_ReadTokenOfAlice0987654321"
HTMX = {"HX-Request": "true"}
MODEL_FILES = {
    "config.json": b'{"model_type": "gpt2"}',
    "model.safetensors": b"\0" * 4096,
    "tokenizer.json": b"{}",
}


@pytest.fixture
def hub(settings):
    with StandInHub(accounts={TOKEN: ("alice", "write"), READ_TOKEN: ("alice", "read")}) as stand_in:
        settings.HF_ENDPOINT = stand_in.url
        yield stand_in


@pytest.fixture
def sent(monkeypatch):
    """The push tasks queued, with everything their messages carried."""
    messages = []
    monkeypatch.setattr(
        tasks.push_to_hub,
        "apply_async",
        lambda args=(), kwargs=None, **options: messages.append((args, kwargs, options)),
    )
    return messages


def completed_with_model(owner, **fields):
    job = completed(make_job(owner, **fields))
    for name, data in MODEL_FILES.items():
        storage.save(f"{job.model_prefix}/{name}", io.BytesIO(data))
    return job


def push_now(owner_client, job, django_capture_on_commit_callbacks, **data):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(
            f"/jobs/{job.pk}/hub/push/",
            {"repo_name": "tuned-proverbs", "private": "on", **data},
            headers=HTMX,
        )
    return response


# --- The token, in the settings ----------------------------------------------------------------


def test_a_saved_token_is_encrypted_at_rest_and_never_shown_again(owner_client, owner):
    response = owner_client.post("/settings/hub-token/", {"token": TOKEN})

    assert response.status_code == 302
    with connection.cursor() as cursor:
        cursor.execute("SELECT encrypted FROM accounts_hubtoken")
        (stored,) = cursor.fetchone()
    assert TOKEN not in stored and "WriteTokenOfAlice" not in stored
    assert HubToken.objects.get(user=owner).reveal() == TOKEN
    page = owner_client.get("/settings/").content.decode()
    assert "A write token is saved" in page
    assert TOKEN not in page and TOKEN[-4:] not in page
    assert 'type="password"' in page and 'value="hf_' not in page


def test_a_token_that_is_not_one_word_is_refused_and_nothing_is_saved(owner_client, owner):
    response = owner_client.post("/settings/hub-token/", {"token": "my token here"})

    assert response.status_code == 400
    assert "This does not look like a Hugging Face token" in response.content.decode()
    assert not HubToken.objects.exists()


def test_the_token_can_be_replaced_and_removed(owner_client, owner):
    owner_client.post("/settings/hub-token/", {"token": TOKEN})
    owner_client.post("/settings/hub-token/", {"token": READ_TOKEN})
    assert HubToken.objects.get(user=owner).reveal() == READ_TOKEN

    owner_client.post("/settings/hub-token/delete/")

    assert not HubToken.objects.filter(user=owner).exists()
    assert "Save a write token" in owner_client.get("/settings/").content.decode()


def test_tokens_saved_under_an_old_key_are_read_after_a_new_key_is_put_first(owner, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.HUB_TOKEN_ENCRYPTION_KEYS = [old]
    save_hub_token(owner, TOKEN)

    settings.HUB_TOKEN_ENCRYPTION_KEYS = [new, old]

    assert HubToken.objects.get(user=owner).reveal() == TOKEN


# --- Asking for a push (web) -------------------------------------------------------------------


def test_without_a_token_the_job_page_says_where_to_save_one(owner_client, owner):
    job = completed_with_model(owner)

    page = owner_client.get(f"/jobs/{job.pk}/hub/", headers=HTMX).content.decode()

    assert "save a write token in your settings" in page
    assert 'data-action="hub-push"' not in page


def test_a_push_is_queued_with_only_its_id_in_the_task_message(
    owner_client, owner, sent, django_capture_on_commit_callbacks
):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)

    response = push_now(owner_client, job, django_capture_on_commit_callbacks)

    assert response.status_code == 200
    push = HubPush.objects.get(job=job)
    assert (push.repo_name, push.private, push.status) == ("tuned-proverbs", True, HubPushStatus.QUEUED)
    assert [message[0] for message in sent] == [(push.pk,)]
    assert TOKEN not in repr(sent) and "WriteTokenOfAlice" not in repr(sent)
    page = response.content.decode()
    assert 'data-hub-push-status="queued"' in page and 'hx-trigger="every 2s"' in page


@pytest.mark.parametrize(
    "name", ["bad name", "-starts-with-dash", "a/b/c", "x" * 97, "../escape", "ends.git"]
)
def test_a_repository_name_the_hub_would_refuse_is_refused_here_with_the_rule(
    owner_client, owner, sent, django_capture_on_commit_callbacks, name
):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)

    response = push_now(owner_client, job, django_capture_on_commit_callbacks, repo_name=name)

    assert "Repository names are NAME or NAMESPACE/NAME" in response.content.decode()
    assert not HubPush.objects.exists() and sent == []


def test_a_second_push_while_one_is_under_way_is_refused(
    owner_client, owner, sent, django_capture_on_commit_callbacks
):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)
    push_now(owner_client, job, django_capture_on_commit_callbacks)

    response = push_now(owner_client, job, django_capture_on_commit_callbacks)

    assert "A push of this model is already under way" in response.content.decode()
    assert HubPush.objects.count() == 1 and len(sent) == 1


def test_a_job_that_has_not_completed_cannot_be_pushed(
    owner_client, owner, sent, django_capture_on_commit_callbacks
):
    save_hub_token(owner, TOKEN)
    job = make_job(owner)

    response = push_now(owner_client, job, django_capture_on_commit_callbacks)

    assert "once the job has completed" in response.content.decode()
    assert not HubPush.objects.exists()


def test_another_users_job_cannot_be_seen_or_pushed(
    outsider_client, owner, sent, django_capture_on_commit_callbacks
):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)

    assert outsider_client.get(f"/jobs/{job.pk}/hub/").status_code == 404
    assert push_now(outsider_client, job, django_capture_on_commit_callbacks).status_code == 404
    assert not HubPush.objects.exists()


def test_without_htmx_a_push_redirects_to_the_job_page_with_a_message(owner_client, owner, sent):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)

    response = owner_client.post(f"/jobs/{job.pk}/hub/push/", {"repo_name": "bad name"}, follow=True)

    assert response.redirect_chain[-1][0] == f"/jobs/{job.pk}/"
    assert "Repository names are NAME or NAMESPACE/NAME" in response.content.decode()


# --- Pushing (worker), against the stand-in Hub -----------------------------------------------------


def queued_push(owner, job, repo_name="tuned-proverbs", private=True) -> HubPush:
    return HubPush.objects.create(job=job, repo_name=repo_name, private=private)


def test_the_model_arrives_in_a_private_repository_under_the_users_account(owner, hub):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)
    push = queued_push(owner, job)

    hub_push.run_push(push.pk)

    push.refresh_from_db()
    assert push.status == HubPushStatus.DONE, push.error
    assert push.repo_id == "alice/tuned-proverbs"
    assert push.url == f"{hub.url}/alice/tuned-proverbs"
    assert push.commit_url.startswith(f"{hub.url}/alice/tuned-proverbs/commit/")
    repo = hub.repos["alice/tuned-proverbs"]
    assert repo["private"] is True
    card = repo["files"].pop("README.md").decode()
    assert repo["files"] == MODEL_FILES
    # The model card goes along, its loading code naming the repository.
    assert "alice/tuned-proverbs" in card and job.base_model.hub_id in card


def test_a_sagemaker_jobs_archive_is_pushed_the_same(owner, hub, sagemaker_output):
    save_hub_token(owner, TOKEN)
    job = sagemaker_job(owner, sagemaker_output, tar_gz(MODEL_FILES))
    assert job.backend == Backend.SAGEMAKER
    push = queued_push(owner, job, repo_name="alice/from-sagemaker", private=False)

    hub_push.run_push(push.pk)

    push.refresh_from_db()
    assert push.status == HubPushStatus.DONE, push.error
    assert hub.repos["alice/from-sagemaker"]["files"] == {**MODEL_FILES, "README.md": ANY}
    assert hub.repos["alice/from-sagemaker"]["private"] is False


@pytest.mark.parametrize(
    ("token", "repo_name", "message"),
    [
        ("hf_NotAKnownToken000000000", "tuned", "The Hub refused the saved token (401)"),
        (READ_TOKEN, "tuned", "The saved token cannot write there (403)"),
        (TOKEN, "someone-else/tuned", "The saved token cannot write there (403)"),
    ],
)
def test_a_token_the_hub_refuses_ends_the_push_with_what_to_do(owner, hub, token, repo_name, message):
    save_hub_token(owner, token)
    push = queued_push(owner, completed_with_model(owner), repo_name=repo_name)

    hub_push.run_push(push.pk)

    push.refresh_from_db()
    assert push.status == HubPushStatus.FAILED
    assert push.error.startswith(message)
    assert token not in push.error
    assert not any(files["files"] for files in hub.repos.values())


def test_no_network_ends_the_push_saying_the_hub_could_not_be_reached(owner, settings):
    settings.HF_ENDPOINT = closed_port_url()
    save_hub_token(owner, TOKEN)
    push = queued_push(owner, completed_with_model(owner))

    hub_push.run_push(push.pk)

    push.refresh_from_db()
    assert push.status == HubPushStatus.FAILED
    assert push.error.startswith(f"Could not reach the Hugging Face Hub at {settings.HF_ENDPOINT}")
    assert TOKEN not in push.error


def test_a_token_saved_under_a_key_no_longer_configured_asks_to_save_it_again(owner, hub, settings):
    settings.HUB_TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    save_hub_token(owner, TOKEN)
    settings.HUB_TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    push = queued_push(owner, completed_with_model(owner))

    hub_push.run_push(push.pk)

    push.refresh_from_db()
    assert push.status == HubPushStatus.FAILED
    assert "can no longer be read" in push.error and "save it again" in push.error


def test_a_missing_stored_model_fails_the_push_with_the_reason(owner, hub):
    save_hub_token(owner, TOKEN)
    job = completed(make_job(owner))  # no files stored
    push = queued_push(owner, job)

    hub_push.run_push(push.pk)

    push.refresh_from_db()
    assert push.status == HubPushStatus.FAILED and push.error


def test_a_push_already_claimed_is_not_run_twice(owner, hub):
    save_hub_token(owner, TOKEN)
    push = queued_push(owner, completed_with_model(owner))
    hub_push.run_push(push.pk)
    requests = len(hub.requests)

    hub_push.run_push(push.pk)  # the same message delivered again

    assert len(hub.requests) == requests


def test_the_finished_push_is_shown_with_its_link_and_polling_stops(owner_client, owner, hub):
    save_hub_token(owner, TOKEN)
    job = completed_with_model(owner)
    push = queued_push(owner, job)
    hub_push.run_push(push.pk)

    response = owner_client.get(f"/jobs/{job.pk}/hub/?poll=1", headers=HTMX)

    assert response.status_code == 286
    page = response.content.decode()
    assert f'href="{hub.url}/alice/tuned-proverbs"' in page and 'data-hub-push-status="done"' in page
    assert "every 2s" not in page


def test_pushes_nobody_picked_up_or_whose_worker_died_end_failed(owner, settings):
    job = completed_with_model(owner)
    now = timezone.now()
    lost = queued_push(owner, job)
    HubPush.objects.filter(pk=lost.pk).update(created_at=now - timedelta(hours=1))
    dead = HubPush.objects.create(
        job=job,
        repo_name="x",
        status=HubPushStatus.RUNNING,
        started_at=now - timedelta(seconds=settings.HUB_PUSH_TIME_LIMIT_SECONDS + 300),
    )
    fresh = queued_push(owner, job)

    assert sorted(hub_push.fail_stale_pushes(now)) == sorted([lost.pk, dead.pk])

    statuses = dict(HubPush.objects.values_list("pk", "status"))
    assert statuses == {lost.pk: "failed", dead.pk: "failed", fresh.pk: "queued"}
    assert "No worker picked the push up" in HubPush.objects.get(pk=lost.pk).error
