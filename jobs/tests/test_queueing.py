# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""The local training queue as its users see it: who goes next, the place in line, the caps.

The fair pick, the places and the limits against PostgreSQL; the broker's side of the tokens
against the real Redis. The real worker and the real script are in test_queueing_worker.py.
"""

from __future__ import annotations

import io
import json
import textwrap
from datetime import timedelta

import pytest
import redis
from django.core.management import call_command
from django.utils import timezone

from conftest import make_user, redis_broker_url
from jobs import actions, artifacts, backends, queueing
from jobs.models import JobStatus, LocalJobAllowance, TrainingJob, WorkerHeartbeat
from jobs.playground import runs as playground
from jobs.tests.conftest import make_job, make_ready_dataset, scratch_base_model
from jobs.tests.test_sagemaker_poll import T0, expect_describe, expect_events, expect_streams, poll
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    fake_aws,
    progress_line,
    sagemaker_job,
    sagemaker_settings,
    stubs,
)
from llmtuner import storage

pytestmark = pytest.mark.django_db
HTMX = {"HX-Request": "true"}


@pytest.fixture
def bob(db):
    return make_user("bob@example.com")


def queue(owner, dataset, name, minutes_ago, **fields):
    job = make_job(owner, dataset, name=name, **fields)
    TrainingJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return job


def claim_and_finish() -> TrainingJob:
    """What one free training slot does: take the fairest job, run it to the end."""
    claimed = queueing.claim_next_local_job(token_job_id=0, token_id=None)
    assert claimed is not None
    TrainingJob.objects.filter(pk=claimed).update(status=JobStatus.COMPLETED, finished_at=timezone.now())
    return TrainingJob.objects.get(pk=claimed)


def training_worker_alive(seconds_ago: float = 1) -> None:
    queueing.record_worker_beat(
        "training@here", ["training"], now=timezone.now() - timedelta(seconds=seconds_ago)
    )


# --- The fair pick ----------------------------------------------------------------------------


def test_a_user_who_queued_one_job_after_another_queued_three_goes_second(owner, bob):
    alices, bobs = make_ready_dataset(owner), make_ready_dataset(bob)
    for n in (1, 2, 3):
        queue(owner, alices, f"alice {n}", minutes_ago=10 - n)
    queue(bob, bobs, "bob 1", minutes_ago=5)

    order = [claim_and_finish().name for _ in range(4)]

    assert order == ["alice 1", "bob 1", "alice 2", "alice 3"]
    assert queueing.claim_next_local_job(token_job_id=0, token_id=None) is None


def test_the_user_with_fewer_jobs_running_goes_first(owner, bob):
    alices, bobs = make_ready_dataset(owner), make_ready_dataset(bob)
    running = queue(owner, alices, "alice running", minutes_ago=30)
    TrainingJob.objects.filter(pk=running.pk).update(status=JobStatus.TRAINING, started_at=timezone.now())
    queue(owner, alices, "alice waiting", minutes_ago=20)
    queue(bob, bobs, "bob waiting", minutes_ago=1)

    claimed = queueing.claim_next_local_job(token_job_id=0, token_id=None)

    assert TrainingJob.objects.get(pk=claimed).name == "bob waiting"


def test_a_job_stopped_while_queued_leaves_its_token_to_nobody(owner):
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.STOPPED)

    assert queueing.claim_next_local_job(token_job_id=job.pk, token_id="its-token") is None


def test_a_token_used_for_another_job_leaves_every_queued_job_a_token_in_the_broker(
    owner, bob, settings, django_capture_on_commit_callbacks
):
    """The worker took A's second token but ran B's job: B's token, still queued, now stands for A's."""
    broker = redis_broker_url()
    if broker is None:
        pytest.skip("needs CELERY_BROKER_URL on Redis")
    from llmtuner.celery import app

    app.conf.task_always_eager = False
    client = redis.Redis.from_url(broker)
    client.delete("training")
    settings.QUEUED_JOB_RESEND_SECONDS = 10
    served = queue(owner, make_ready_dataset(owner), "alice served", minutes_ago=60)
    TrainingJob.objects.filter(pk=served.pk).update(
        status=JobStatus.COMPLETED, started_at=timezone.now() - timedelta(minutes=50)
    )
    alices = queue(owner, make_ready_dataset(owner), "alice next", minutes_ago=5)
    bobs = queue(bob, make_ready_dataset(bob), "bob next", minutes_ago=4)
    with django_capture_on_commit_callbacks(execute=True):
        backends.queue_job(alices)
        backends.queue_job(bobs)
    alices_token = alices.celery_task_id
    # The worker takes Alice's token off the queue (delivered, then acknowledged once run) ...
    for message in client.lrange("training", 0, -1):
        if alices_token.encode() in message:
            client.lrem("training", 1, message)
    try:
        claimed = queueing.claim_next_local_job(alices.pk, alices_token)

        # ... and Bob goes first: Alice was served an hour ago, Bob never.
        assert claimed == bobs.pk
        alices.refresh_from_db()
        assert alices.status == JobStatus.QUEUED and alices.celery_task_id == bobs.celery_task_id
        assert backends.resend_lost_jobs(now=timezone.now() + timedelta(minutes=10)) == []
    finally:
        client.delete("training")


# --- Place in line ---------------------------------------------------------------------------


@pytest.fixture
def busy_line(owner, bob):
    """Alice trains (2 min left) and has one more queued; Bob queued one after her."""
    training_worker_alive()
    alices, bobs = make_ready_dataset(owner), make_ready_dataset(bob)
    running = queue(owner, alices, "alice running", minutes_ago=30)
    TrainingJob.objects.filter(pk=running.pk).update(
        status=JobStatus.TRAINING, started_at=timezone.now() - timedelta(minutes=20), eta_seconds=120
    )
    alice_waiting = queue(owner, alices, "alice waiting", minutes_ago=10, estimated_seconds=100)
    bob_waiting = queue(bob, bobs, "bob waiting", minutes_ago=5, estimated_seconds=60)
    return running, alice_waiting, bob_waiting


def test_each_queued_job_gets_its_place_and_expected_start(busy_line):
    running, alice_waiting, bob_waiting = busy_line

    line = queueing.line()

    assert set(line) == {alice_waiting.pk, bob_waiting.pk}
    # Bob goes next (no job running); Alice's second starts once his 60 s after her 120 s are done.
    assert line[bob_waiting.pk].describe() == "1st in line: no job ahead, about 2 min"
    assert line[alice_waiting.pk].describe() == "2nd in line: 1 job ahead, about 3 min"


def test_the_card_shows_the_place_in_line_and_no_missing_worker_hint_while_the_worker_is_busy(
    owner_client, busy_line
):
    running, alice_waiting, bob_waiting = busy_line

    page = owner_client.get(f"/jobs/{alice_waiting.pk}/progress/", headers=HTMX).content.decode()

    assert 'data-queue-place="2"' in page and "2nd in line: 1 job ahead, about 3 min" in page
    assert "No worker has picked it up" not in page
    listing = owner_client.get("/jobs/").content.decode()
    assert "2nd in line: 1 job ahead, about 3 min" in listing


def test_the_missing_worker_hint_shows_when_no_training_worker_beats(owner_client, busy_line):
    running, alice_waiting, bob_waiting = busy_line
    WorkerHeartbeat.objects.update(beat_at=timezone.now() - timedelta(minutes=2))

    page = owner_client.get(f"/jobs/{alice_waiting.pk}/progress/", headers=HTMX).content.decode()

    assert "No worker has picked it up for 10 min, and no training worker is running" in page
    assert "2nd in line: 1 job ahead" in page


def test_a_worker_that_serves_other_queues_only_is_no_training_worker(owner_client, owner):
    queueing.record_worker_beat("default@here", ["default", "playground"])
    job = queue(owner, make_ready_dataset(owner), "waiting", minutes_ago=3)

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()

    assert "no training worker is running" in page
    assert queueing.workers_alive() == 0


def test_a_worker_killed_outright_is_forgotten_a_day_later():
    queueing.record_worker_beat("training@gone", ["training"], now=timezone.now() - timedelta(days=2))
    training_worker_alive()

    assert list(WorkerHeartbeat.objects.values_list("name", flat=True)) == ["training@here"]


def test_a_worker_that_shuts_down_is_gone_at_once():
    training_worker_alive()
    queueing.forget_worker("training@here")

    assert queueing.workers_alive() == 0


def test_job_status_gives_each_queued_job_its_queue_position(busy_line):
    running, alice_waiting, bob_waiting = busy_line
    out = io.StringIO()

    call_command("job_status", "--json", stdout=out)

    positions = {job["id"]: job["queue_position"] for job in json.loads(out.getvalue())}
    assert positions == {running.pk: None, alice_waiting.pk: 2, bob_waiting.pk: 1}
    table = io.StringIO()
    call_command("job_status", stdout=table)
    assert "queued (1st in line)" in table.getvalue()


# --- The cap on local jobs per user -----------------------------------------------------------


def test_a_launch_over_the_users_cap_is_refused_with_the_figures(owner, settings):
    settings.LOCAL_JOBS_PER_USER = 2
    dataset = make_ready_dataset(owner)
    running = queue(owner, dataset, "running", minutes_ago=5)
    TrainingJob.objects.filter(pk=running.pk).update(status=JobStatus.TRAINING)
    queue(owner, dataset, "queued", minutes_ago=4)

    with pytest.raises(actions.LimitRefused) as refused:
        actions.launch_job(owner, name="third", dataset=dataset, base_model=scratch_base_model())

    assert str(refused.value) == (
        f"At most 2 local jobs per user may be running or queued at once; {owner.email} has 2 "
        "(1 running, 1 queued). Wait for one to end, or stop one, then launch again."
    )
    assert TrainingJob.objects.count() == 2


def test_the_new_job_form_shows_the_refusal_and_saves_nothing(owner_client, owner, settings):
    settings.LOCAL_JOBS_PER_USER = 1
    dataset = make_ready_dataset(owner)
    queue(owner, dataset, "queued", minutes_ago=4)
    data = {
        "dataset": dataset.pk,
        "base_model": scratch_base_model().pk,
        "backend": "local",
        "preset": "custom",
        "method": "full",
        "epochs": "1",
        "max_steps": "12",
        "batch_size": "4",
        "max_seq_length": "64",
    }

    response = owner_client.post("/jobs/new/", data)

    assert response.status_code == 400
    assert "At most 1 local job per user may be running or queued at once" in response.content.decode()
    assert TrainingJob.objects.count() == 1


def test_a_retry_over_the_cap_is_refused(owner_client, owner, settings):
    settings.LOCAL_JOBS_PER_USER = 1
    dataset = make_ready_dataset(owner)
    failed = queue(owner, dataset, "failed", minutes_ago=9)
    TrainingJob.objects.filter(pk=failed.pk).update(status=JobStatus.FAILED)
    queue(owner, dataset, "queued", minutes_ago=4)

    page = owner_client.post(f"/jobs/{failed.pk}/retry/", follow=True).content.decode()

    assert "At most 1 local job per user" in page and "(0 running, 1 queued)" in page
    assert not TrainingJob.objects.filter(retry_of=failed).exists()


def test_an_allowance_set_in_the_admin_replaces_the_setting(client, staff, owner, settings):
    settings.LOCAL_JOBS_PER_USER = 1
    dataset = make_ready_dataset(owner)
    queue(owner, dataset, "queued", minutes_ago=4)
    client.force_login(staff)
    page = client.get(f"/admin/auth/user/{owner.pk}/change/").content.decode()
    assert 'name="local_job_allowance-0-local_jobs"' in page

    LocalJobAllowance.objects.create(user=owner, local_jobs=2)
    actions.launch_job(owner, name="second", dataset=dataset, base_model=scratch_base_model())
    LocalJobAllowance.objects.filter(user=owner).update(local_jobs=0)

    with pytest.raises(actions.LimitRefused, match="Local training is not open to this account"):
        actions.launch_job(owner, name="third", dataset=dataset, base_model=scratch_base_model())


def write_manifest(tmp_path, owner, dataset, entries: int, **hyperparameters) -> str:
    hp = {"epochs": 1, "max_steps": 10, "batch_size": 4, "max_seq_length": 64, **hyperparameters}
    jobs = "".join(
        f"""
          - name: tiny-{n}
            user: {owner.email}
            dataset: {dataset.pk}
            base_model: scratch:tiny-gpt2
            backend: local
            hyperparameters: {json.dumps(hp)}
        """
        for n in range(1, entries + 1)
    )
    path = tmp_path / "jobs.yaml"
    path.write_text(textwrap.dedent("jobs:" + textwrap.dedent(jobs)), encoding="utf-8")
    return str(path)


def submit_jobs(path: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(Exception):  # noqa: B017 - the command fails (CommandError) and says why
        call_command("submit_jobs", path, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def test_manifest_entries_over_the_cap_are_refused_before_any_is_submitted(tmp_path, owner, settings):
    settings.LOCAL_JOBS_PER_USER = 2
    dataset = make_ready_dataset(owner)
    scratch_base_model()
    queue(owner, dataset, "queued", minutes_ago=4)

    said = submit_jobs(write_manifest(tmp_path, owner, dataset, entries=2))

    assert "has 1 (0 running, 1 queued), and 1 earlier in this manifest" in said
    assert TrainingJob.objects.count() == 1


# --- The runtime cap --------------------------------------------------------------------------


def test_a_local_launch_estimated_past_the_runtime_cap_is_refused_with_the_figures(owner, settings):
    settings.MAX_JOB_RUNTIME_SECONDS = 5  # the tiny job's estimate is more (its start-up alone)
    dataset = make_ready_dataset(owner)
    from jobs.forms import NewJobForm

    form = NewJobForm(
        owner,
        {
            "dataset": dataset.pk,
            "base_model": scratch_base_model().pk,
            "backend": "local",
            "preset": "custom",
            "method": "full",
            "epochs": "1",
            "max_steps": "12",
            "batch_size": "4",
            "max_seq_length": "64",
        },
    )

    assert not form.is_valid()
    message = " ".join(form.non_field_errors())
    assert f"This job is estimated at {form.estimate.duration}, past the 5 s a job may run" in message
    assert "train on SageMaker" in message


def test_a_manifest_entry_past_the_runtime_cap_is_refused(tmp_path, owner, settings):
    settings.MAX_JOB_RUNTIME_SECONDS = 5
    dataset = make_ready_dataset(owner)
    scratch_base_model()

    said = submit_jobs(write_manifest(tmp_path, owner, dataset, entries=1))

    assert "past the 5 s a job may run on this machine" in said
    assert not TrainingJob.objects.exists()


def test_a_retry_estimated_past_the_runtime_cap_is_refused(owner, settings):
    settings.MAX_JOB_RUNTIME_SECONDS = 3600
    stopped = make_job(owner, estimated_seconds=7200)
    TrainingJob.objects.filter(pk=stopped.pk).update(status=JobStatus.STOPPED)
    stopped.refresh_from_db()

    with pytest.raises(actions.LimitRefused, match="estimated at 2 h 00 min, past the 1 h 00 min"):
        actions.retry_job(stopped)


# --- Stop says what happens -------------------------------------------------------------------


def test_the_stop_confirmation_says_the_model_so_far_is_kept(owner_client, job):
    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.TRAINING, step=7, total_steps=30)

    page = owner_client.get(f"/jobs/{job.pk}/stop/").content.decode()

    assert "at step 7 of 30" in page and "the model so far is saved" in page
    assert "not kept" not in page


def test_the_stop_confirmation_of_a_queued_job_says_it_leaves_the_queue(owner_client, job):
    page = owner_client.get(f"/jobs/{job.pk}/stop/").content.decode()

    assert "it leaves the queue before it starts" in page


def stopped_with_a_model(job, saved: bool = True) -> TrainingJob:
    prefix = f"{job.storage_prefix()}/model"
    if saved:
        storage.save(f"{prefix}/config.json", io.BytesIO(b"{}"))
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.STOPPED,
        step=7,
        total_steps=30,
        finished_at=timezone.now(),
        metrics={"step": 7, "total_steps": 30, "model_saved": saved},
        model_prefix=prefix if saved else "",
        status_message="Stopped at step 7 of 30; the model so far is saved.",
    )
    job.refresh_from_db()
    return job


def test_a_stopped_job_with_a_saved_model_offers_download_and_the_playground(owner_client, job):
    job = stopped_with_a_model(job)

    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    download = owner_client.get(f"/jobs/{job.pk}/download/")

    assert "Download the model so far (.zip)" in page and "Try it in the playground" in page
    assert download.status_code == 200
    assert b"config.json" in b"".join(download.streaming_content)
    assert playground.unavailable_reason(job) is None


def test_a_job_stopped_before_its_first_step_offers_no_model(owner_client, job):
    job = stopped_with_a_model(job, saved=False)

    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()

    assert 'data-action="download"' not in page
    assert owner_client.get(f"/jobs/{job.pk}/download/").status_code == 404
    assert not artifacts.has_model(job)
    assert "playground opens once it has completed (or stopped after its first step)" in (
        playground.unavailable_reason(job) or ""
    )


def test_another_user_cannot_download_a_stopped_jobs_model(outsider_client, job):
    job = stopped_with_a_model(job)

    assert outsider_client.get(f"/jobs/{job.pk}/download/").status_code == 404


def test_a_sagemaker_job_stopped_after_its_script_saved_the_model_says_so_and_offers_it(
    owner, owner_client, stubs
):
    job = sagemaker_job(owner, status=JobStatus.STOPPING)
    stream = f"{job.sagemaker_job_name}/algo-1-1"
    expect_describe(
        stubs,
        job,
        "Stopped",
        "Stopped",
        BillableTimeInSeconds=120,
        TrainingTimeInSeconds=120,
        ModelArtifacts={"S3ModelArtifacts": "s3://sagemaker-output/job/output/model.tar.gz"},
    )
    expect_streams(stubs, job, stream)
    stopped = progress_line("stopped", step=7, total_steps=30, reason="SIGTERM", model_saved=True)
    expect_events(stubs, stream, [stopped], None, "f/1")
    expect_events(stubs, stream, [], "f/1", "f/1")

    poll(T0)

    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.status_message == "Stopped; 120 billable seconds, $0.05. The model so far is saved."
    assert artifacts.has_model(job)
    assert "Download the model so far (.zip)" in owner_client.get(f"/jobs/{job.pk}/").content.decode()
