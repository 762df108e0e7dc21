"""The playground through a real Celery worker on the real Redis broker, on a job trained here."""

from __future__ import annotations

import time

import pytest

from jobs import artifacts
from jobs.backends import local
from jobs.models import JobStatus, PlaygroundRun, PlaygroundStatus
from jobs.playground import runs
from jobs.tests.conftest import make_job

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def worker_model_cache(tmp_path, monkeypatch, settings):
    # Asked for before `celery_worker_process`, so the worker inherits it.
    folder = tmp_path / "worker-model-cache"
    monkeypatch.setenv("PLAYGROUND_CACHE_DIR", str(folder))
    settings.PLAYGROUND_CACHE_DIR = folder
    return folder


def wait_for_run(run: PlaygroundRun, timeout: float = 120) -> PlaygroundRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_final:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run.pk} is still {run.status}")


def test_a_prompt_is_answered_by_both_models_on_a_worker(worker_model_cache, celery_worker_process, owner):
    job = make_job(owner)
    local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message

    first = runs.submit_prompt(job, prompt="The quick brown", max_new_tokens=16, temperature=0, top_p=1)
    second = runs.submit_prompt(job, prompt="A stitch in", max_new_tokens=16, temperature=0.8, top_p=0.9)

    for run in (wait_for_run(first), wait_for_run(second)):
        assert run.status == PlaygroundStatus.DONE, run.error
        assert run.tuned_output.strip() and run.base_output.strip()
        assert run.base_label.startswith("Untrained baseline")
        assert run.tuned_seconds is not None and run.base_seconds is not None
    # The tuned model's files were fetched to the worker's disk once, for both prompts.
    folders = [path for path in worker_model_cache.iterdir() if path.is_dir()]
    assert [path.name for path in folders] == [f"job-{job.pk}-{artifacts.model_identity(job)}"]
    assert (folders[0] / "config.json").exists()
