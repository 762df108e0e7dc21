"""Pushing a job's tuned model to a Hugging Face Hub repository with its owner's saved token.

The web process checks the request and saves a `HubPush`; the `push_to_hub` task (its own
"exports" queue, so a long upload never holds up SageMaker polling or dataset preparation)
gets the model folder through jobs.artifacts and hands it to `huggingface_hub`. The task
message carries the push's id only: the token is read and decrypted in the worker, and is
scrubbed from every message kept.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import secrets
from accounts.models import HubToken
from jobs import artifacts, model_card
from jobs.models import HubPush, HubPushStatus, JobStatus, TrainingJob
from llmtuner import broker, scratch

logger = logging.getLogger(__name__)

# The Hub's own rule for a namespace or repository name.
HUB_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_NAME = re.compile(rf"^(?:{HUB_NAME}/)?{HUB_NAME}$")
QUEUED_TIMEOUT = timedelta(minutes=30)
RUNNING_GRACE = timedelta(minutes=2)
MAX_ERROR_CHARS = 1000


class PushRefused(Exception):
    """The push cannot be asked for; the message says why and what to do."""


# --- Asking (web process) ----------------------------------------------------------------------


def default_repo_name(job: TrainingJob) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", job.name).strip("-._")[:80] or "model"
    return f"{name}-{job.pk}"


def unavailable_reason(job: TrainingJob) -> str | None:
    if job.status not in (JobStatus.COMPLETED, JobStatus.STOPPED):
        return "A model can be pushed once the job has completed."
    try:
        artifacts.locate(job)
    except artifacts.ModelArtifactsError as error:
        return str(error)
    return None


def request_push(job: TrainingJob, repo_name: str, private: bool) -> HubPush:
    """Save the push and queue it after commit; raises PushRefused with the reason."""
    repo_name = repo_name.strip()
    if not REPO_NAME.match(repo_name) or ".." in repo_name or repo_name.endswith(".git"):
        raise PushRefused(
            "Repository names are NAME or NAMESPACE/NAME: letters, digits, '-', '_' and '.', "
            "up to 96 characters each, starting and ending with a letter or digit."
        )
    if not HubToken.objects.filter(user_id=job.owner_id).exists():
        raise PushRefused("Save a Hugging Face write token in your settings first.")
    reason = unavailable_reason(job)
    if reason:
        raise PushRefused(reason)
    with transaction.atomic():
        TrainingJob.objects.select_for_update().only("pk").get(pk=job.pk)  # one push at a time per job
        if HubPush.objects.filter(job=job, status__in=(HubPushStatus.QUEUED, HubPushStatus.RUNNING)).exists():
            raise PushRefused("A push of this model is already under way: wait for it to finish.")
        push = HubPush.objects.create(job=job, repo_name=repo_name, private=private)
        from jobs.tasks import push_to_hub

        task_id = f"hub-push-{push.pk}"
        HubPush.objects.filter(pk=push.pk).update(celery_task_id=task_id)
        broker.send_on_commit(push_to_hub, args=(push.pk,), task_id=task_id)
    return push


# --- Pushing (worker) --------------------------------------------------------------------------


def run_push(push_id: int) -> None:
    push = _claim(push_id)
    if push is None:
        return
    token = None
    try:
        token = _token_of(push.job)
        repo_id, url, commit_url = _push(push, token)
    except SoftTimeLimitExceeded:
        minutes = settings.HUB_PUSH_TIME_LIMIT_SECONDS // 60
        _finish(push, error=f"The push took longer than {minutes} min and was stopped.")
    except Exception as error:  # every failure becomes the push's message
        message = _scrub(describe_error(error), token)
        if message.startswith("The push failed"):
            logger.exception("hub push %s failed", push_id)
        _finish(push, error=message)
    else:
        _finish(push, repo_id=repo_id, url=url, commit_url=commit_url)


def _claim(push_id: int) -> HubPush | None:
    now = timezone.now()
    claimed = HubPush.objects.filter(pk=push_id, status=HubPushStatus.QUEUED).update(
        status=HubPushStatus.RUNNING, started_at=now
    )
    if not claimed:
        return None  # already done, or failed by the reaper
    return HubPush.objects.select_related("job", "job__base_model").get(pk=push_id)


def _token_of(job: TrainingJob) -> str:
    hub_token = HubToken.objects.filter(user_id=job.owner_id).first()
    if hub_token is None:
        raise PushRefused(
            "Your Hugging Face token was removed: save a write token in your settings and push again."
        )
    try:
        return hub_token.reveal()
    except secrets.UnreadableSecret:
        raise PushRefused(
            "Your saved Hugging Face token can no longer be read (the server's encryption key changed): "
            "save it again in your settings."
        ) from None


def _push(push: HubPush, token: str) -> tuple[str, str, str]:
    from huggingface_hub import HfApi  # worker only

    api = HfApi(endpoint=settings.HF_ENDPOINT, token=token)
    repo_id = push.repo_name
    if "/" not in repo_id:
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    HubPush.objects.filter(pk=push.pk).update(repo_id=repo_id)
    repo_url = api.create_repo(repo_id, private=push.private, exist_ok=True)
    with scratch.task_folder("hub-push-") as folder:
        root = artifacts.fetch(push.job, folder / "model")
        write_model_card(push.job, root, repo_id)
        commit = api.upload_folder(
            folder_path=str(root),
            repo_id=repo_id,
            commit_message=f"{push.job.name}: fine-tuned with LLM Tuner (job {push.job.pk})",
        )
    return repo_id, str(repo_url), str(commit.commit_url or "")


def write_model_card(job: TrainingJob, root: Path, repo_id: str) -> None:
    """The download's README.md (jobs/model_card.py) goes to the Hub too, so the repository says how to
    prompt the model; its loading code names the repository."""
    evaluation, samples = _stored_json(root / "evaluation.json"), _stored_json(root / "samples.json")
    (root / "README.md").write_text(
        model_card.render(job, repo_id, "model", evaluation, samples), encoding="utf-8"
    )


def _stored_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def describe_error(error: Exception) -> str:
    """What went wrong, in words the owner can act on."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, (PushRefused, artifacts.ModelArtifactsError)):
        return str(error)
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401:
            return "The Hub refused the saved token (401): save a new write token in your settings."
        if status == 403:
            return (
                "The saved token cannot write there (403): use a token with write access, and a repository "
                "under your own account or an organisation you can write to."
            )
        return f"The Hub answered {status}: {str(error).splitlines()[0]}"
    if isinstance(error, (OSError, ConnectionError)) or type(error).__module__.startswith(
        ("httpx", "httpcore")
    ):
        reason = type(error).__name__
        return f"Could not reach the Hugging Face Hub at {settings.HF_ENDPOINT} ({reason}): try again later."
    return f"The push failed: {type(error).__name__}: {error}"


def _scrub(message: str, token: str | None) -> str:
    if token:
        message = message.replace(token, "***")
    return message[:MAX_ERROR_CHARS]


def _finish(
    push: HubPush, *, error: str = "", repo_id: str = "", url: str = "", commit_url: str = ""
) -> None:
    fields = {"finished_at": timezone.now(), "status": HubPushStatus.FAILED if error else HubPushStatus.DONE}
    if error:
        fields["error"] = error
    else:
        fields.update(repo_id=repo_id, url=url, commit_url=commit_url)
    HubPush.objects.filter(pk=push.pk, status=HubPushStatus.RUNNING).update(**fields)


def fail_stale_pushes(now=None) -> list[int]:
    """Queued pushes nobody picked up, and running ones whose worker died, end failed with the reason."""
    now = now or timezone.now()
    limit = timedelta(seconds=settings.HUB_PUSH_TIME_LIMIT_SECONDS) + RUNNING_GRACE
    stale = list(
        HubPush.objects.filter(status=HubPushStatus.QUEUED, created_at__lt=now - QUEUED_TIMEOUT).values_list(
            "pk", flat=True
        )
    )
    HubPush.objects.filter(pk__in=stale, status=HubPushStatus.QUEUED).update(
        status=HubPushStatus.FAILED,
        finished_at=now,
        error="No worker picked the push up (is a worker serving the “exports” queue?): push again.",
    )
    dead = list(
        HubPush.objects.filter(status=HubPushStatus.RUNNING, started_at__lt=now - limit).values_list(
            "pk", flat=True
        )
    )
    HubPush.objects.filter(pk__in=dead, status=HubPushStatus.RUNNING).update(
        status=HubPushStatus.FAILED, finished_at=now, error="The worker stopped during the push: push again."
    )
    return stale + dead
