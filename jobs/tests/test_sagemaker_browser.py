# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""A person launches a SageMaker job in real headless Chromium and watches it train, complete and cost.

The AWS boundary is stubbed inside this process, which the live server shares:
moto stores the uploaded code and data, StubAccount plays SageMaker and
CloudWatch Logs. The live server's launch runs the submit task in-process
(eager), and the test plays Celery beat, calling the poller as AWS moves on.
"""

from __future__ import annotations

import boto3
import pytest
from django.utils import timezone
from moto import mock_aws

from conftest import make_user
from datasets_app.tests.test_browser import log_in
from jobs.backends import sagemaker as sm
from jobs.models import Backend, JobStatus, TrainingJob
from jobs.tests.conftest import make_ready_dataset, scratch_base_model
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    BUCKET,
    REGION,
    StubAccount,
    fake_aws,
    instance,
    progress_line,
    refuse_network,
    sagemaker_settings,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def aws_account(fake_aws):
    fake_aws.session.events.unregister("before-send", refuse_network)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield StubAccount(fake_aws.session)


@pytest.fixture
def eager_tasks():
    from llmtuner.celery import app

    before = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


def beat(account: StubAccount) -> sm.PollReport:
    """One poll cycle, as Celery beat would run it now."""
    now = timezone.now()
    account.clock = now
    return sm.poll_jobs(now=now)


def test_launch_on_sagemaker_watch_it_train_and_see_what_it_cost(page, aws_account, eager_tasks):
    owner = make_user("alice@example.com")
    dataset = make_ready_dataset(owner)
    scratch_base_model()  # transactional tests flush the catalogues the migrations seeded
    g5 = instance("ml.g5.xlarge")
    log_in(page, "alice@example.com")

    page.goto(f"/jobs/new/?dataset={dataset.pk}")
    page.locator("#id_base_model").select_option(
        label="Tiny GPT-2 (from scratch) · 2M parameters · 256 tokens · MIT"
    )
    page.locator("input[name=preset][value=quick]").check()
    page.locator('input[name=max_steps][value="50"]').wait_for()  # the preset filled the fields in
    page.locator("input[name=backend][value=sagemaker]").check()
    page.locator("#id_instance_type").select_option(value=str(g5.pk))
    page.locator("[data-estimate-cost]", has_text="$").wait_for()
    page.locator("[data-launch]").click()

    # Submitted while the launch request finished: the job page says where it runs.
    page.wait_for_url("**/jobs/*/")
    job = TrainingJob.objects.get()
    assert job.backend == Backend.SAGEMAKER
    assert job.sagemaker_job_name == f"llmtuner-job-{job.pk}-1", job.status_message
    card = page.locator("#job-progress")
    card.locator("[data-status-message]", has_text="Submitted to SageMaker").wait_for()

    # AWS starts it; its log shows the script's progress.
    aws_account.clock = timezone.now()
    aws_account.change(job.sagemaker_job_name, "InProgress", "Training")
    aws_account.log(
        job.sagemaker_job_name,
        "Installing requirements",
        progress_line("start", total_steps=50, epochs=1, samples=60),
        progress_line("progress", step=20, total_steps=50, epoch=0.4, loss=2.5, learning_rate=0.001),
    )
    beat(aws_account)
    page.locator('#job-progress[data-status="training"]').wait_for()
    page.locator('#job-progress [data-percent="40"]').wait_for()
    page.locator("#log-lines", has_text="step 20/50 loss 2.5").wait_for()
    assert page.locator("[data-cost]").inner_text().startswith("$")

    # It completes in AWS after 600 billable seconds.
    aws_account.log(
        job.sagemaker_job_name,
        progress_line("progress", step=50, total_steps=50, epoch=1.0, loss=1.5),
        progress_line("done", step=50, total_steps=50, train_loss=1.6),
    )
    aws_account.clock = timezone.now()
    aws_account.change(
        job.sagemaker_job_name,
        "Completed",
        "Completed",
        BillableTimeInSeconds=600,
        TrainingTimeInSeconds=600,
        ModelArtifacts={"S3ModelArtifacts": f"s3://{BUCKET}/x/output/model.tar.gz"},
    )
    beat(aws_account)
    page.locator('#job-progress[data-status="completed"]').wait_for()
    assert page.locator("[data-cost]").inner_text() == "$0.23"
    assert "Completed on SageMaker: 600 billable seconds, $0.23" in card.inner_text()
    page.locator("[data-loss-chart][data-done=true]").wait_for()
    assert "every 2s" not in (card.get_attribute("hx-trigger") or "")
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert str(job.cost_usd) == "0.2347"
