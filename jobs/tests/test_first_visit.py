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
    assert "Stopping “Tiny proverbs”." in page
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
