"""Two requests at once on PostgreSQL: the same launch form, or a retry of the same attempt, makes one job.

Both requests are held just before they insert, so each has already looked for the other's job and
found none: the unique constraints alone decide, and the loser answers with the winner's job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection, connections, transaction
from django.test import Client

from jobs import actions
from jobs.models import JobStatus, TrainingJob
from jobs.tests.conftest import make_job
from jobs.tests.test_views import launch_form

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL's concurrent writers"),
]


@pytest.fixture
def sent(monkeypatch) -> list[tuple]:
    """The tasks sent to the broker after commit (recorded, not run)."""
    sent: list[tuple] = []

    def record(task, args=(), task_id=None, **options):
        transaction.on_commit(lambda: sent.append((task.name, args)))

    monkeypatch.setattr("llmtuner.broker.send_on_commit", record)
    return sent


@pytest.fixture
def inserting_together(monkeypatch):
    """Holds the first two launches until both are about to insert."""
    barrier = threading.Barrier(2, timeout=10)
    launch = actions.launch_job

    def held(*args, **kwargs):
        barrier.wait()
        return launch(*args, **kwargs)

    monkeypatch.setattr(actions, "launch_job", held)


def at_once(work: Callable[[], object]) -> list:
    results: list = []

    def run() -> None:
        try:
            results.append(work())
        finally:
            connections.close_all()  # this thread's own connection, so the test database can go

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2, "both requests answered"
    return results


def test_two_retries_of_the_same_attempt_at_once_make_one_next_attempt(owner, sent, inserting_together):
    failed = make_job(owner, status=JobStatus.FAILED)

    results = at_once(lambda: actions.retry_job(TrainingJob.objects.get(pk=failed.pk)))

    second = TrainingJob.objects.get(attempt=2)
    assert sorted((job.pk, made) for job, made in results) == [(second.pk, False), (second.pk, True)]
    assert TrainingJob.objects.count() == 2
    assert [args for _, args in sent] == [(second.pk,)]


def test_the_same_launch_form_posted_twice_at_once_makes_one_job(owner, sent, inserting_together):
    browser = Client()
    browser.force_login(owner)
    form = launch_form(browser, owner)

    def post():
        client = Client()
        client.force_login(owner)
        return client.post("/jobs/new/", form)

    responses = at_once(post)

    job = TrainingJob.objects.get()
    assert [(r.status_code, r.url) for r in responses] == [(302, f"/jobs/{job.pk}/")] * 2
    assert [args for _, args in sent] == [(job.pk,)]
