"""Resume and Continue on the local backend: the checkpoint goes to storage while the job runs, the
next attempt gets it back, and a continued job gets the tuned model it starts from.

The first tests run a small stand-in for finetune.py that does what contracts C1-C3 ask of it
(resume from the newest checkpoint in SM_CHECKPOINT_DIR, read SM_CHANNEL_INIT_MODEL), so they
test the platform alone; the last runs the real script on the tiny model.
"""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from jobs import actions, checkpoints, lifecycle
from jobs.backends import local
from jobs.models import JobStatus, LogLine, MetricPoint, TrainingJob
from jobs.tests.conftest import make_job
from llmtuner import storage

pytestmark = [pytest.mark.slow]

# Trains 10 steps; resumes from the newest complete checkpoint-<step> in SM_CHECKPOINT_DIR; writes
# one (temp name, state.json last, renamed) every 4 steps; with CRASH_AT set, dies at that step.
STAND_IN = r"""
import json, os, sys
from pathlib import Path

def emit(**event):
    print(json.dumps(event), flush=True)

folder = Path(os.environ["SM_CHECKPOINT_DIR"])
done = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
        if not p.name.endswith(".tmp") and (p / "state.json").exists()]
start = max(done, default=0)
init = os.environ.get("SM_CHANNEL_INIT_MODEL")
if init:
    print("init model files: " + ",".join(sorted(p.name for p in Path(init).iterdir())), file=sys.stderr)
    print("init model config: " + (Path(init) / "config.json").read_text(), file=sys.stderr)
emit(event="start", total_steps=10, resumed_from_step=start)
crash = int(os.environ.get("CRASH_AT", "0") or 0)
for step in range(start + 1, 11):
    emit(event="progress", step=step, total_steps=10, loss=10.0 / step)
    if step % 4 == 0:
        tmp = folder / f"checkpoint-{step}.tmp"
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"w%d" % step)
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        tmp.rename(folder / f"checkpoint-{step}")
        emit(event="checkpoint", step=step, path=str(folder / f"checkpoint-{step}"))
    if step == crash:
        emit(event="error", message="the machine fell over")
        sys.exit(1)
model = Path(os.environ["SM_MODEL_DIR"])
(model / "config.json").write_text("{}")
emit(event="done", step=10, total_steps=10, train_loss=1.0)
"""


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(local, "SCRIPT", script)
    monkeypatch.setattr(local, "PASSED_ENVIRONMENT", (*local.PASSED_ENVIRONMENT, "CRASH_AT"))
    return script


@pytest.mark.django_db
def test_a_crashed_job_resumes_where_its_checkpoint_is_and_ends_at_the_same_steps(
    owner, stand_in, monkeypatch
):
    job = make_job(owner)
    monkeypatch.setenv("CRASH_AT", "6")
    local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.step == 6
    assert job.checkpoint_step == 4
    assert checkpoints.stored_steps(checkpoints.prefix(job)) == [4]  # stored while it ran
    assert LogLine.objects.filter(
        job=job, text="Checkpoint at step 4 stored: the job can resume from it"
    ).exists()

    monkeypatch.delenv("CRASH_AT")
    new, made = actions.retry_job(job)
    assert made and new.resumed_at_step == 4
    local.run_job(new.pk)

    new.refresh_from_db()
    assert new.status == JobStatus.COMPLETED, new.status_message
    assert (new.step, new.total_steps, new.resumed_at_step) == (10, 10, 4)
    texts = list(LogLine.objects.filter(job=new).values_list("text", flat=True))
    assert "Resuming from the checkpoint at step 4" in texts
    assert any(text.endswith("resumed from the checkpoint at step 4") for text in texts)
    # One curve: the first attempt's points to step 4, then this attempt's, each step once.
    steps = list(MetricPoint.objects.filter(job=new).order_by("id").values_list("step", flat=True))
    assert steps == list(range(1, 11))
    # Its own checkpoint (step 8) joined the chain's: a third attempt would start there.
    assert checkpoints.stored_steps(checkpoints.prefix(job)) == [4, 8]


@pytest.mark.django_db
def test_the_last_checkpoint_is_stored_before_the_job_is_seen_ended(owner, stand_in, monkeypatch):
    """The last checkpoint (the script writes one on SIGTERM) is stored before the job ends."""
    job = make_job(owner)
    monkeypatch.setenv("CRASH_AT", "8")
    real_finish = local.LocalRun._finish

    def finish(run, returncode, folders):
        # The script has exited; the job is not ended yet, and its newest checkpoint is stored.
        assert TrainingJob.objects.get(pk=run.job.pk).status == JobStatus.TRAINING
        assert checkpoints.stored_steps(checkpoints.prefix(run.job))[-1] == 8
        real_finish(run, returncode, folders)

    monkeypatch.setattr(local.LocalRun, "_finish", finish)
    local.run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.checkpoint_step == 8


@pytest.mark.django_db
def test_a_continued_job_starts_from_the_tuned_model(owner, stand_in):
    source = make_job(owner, name="First run")
    storage.save(f"{source.storage_prefix()}/model/config.json", io.BytesIO(b'{"trained": true}'))
    storage.save(f"{source.storage_prefix()}/model/model.safetensors", io.BytesIO(b"weights"))
    TrainingJob.objects.filter(pk=source.pk).update(
        status=JobStatus.COMPLETED, model_prefix=f"{source.storage_prefix()}/model"
    )
    job = make_job(owner, source.dataset, continued_from=source)

    local.run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    texts = list(LogLine.objects.filter(job=job).values_list("text", flat=True))
    assert f"Starting from the tuned model of “First run” (job {source.pk})" in texts
    assert "init model files: config.json,model.safetensors" in texts
    assert 'init model config: {"trained": true}' in texts


@pytest.mark.django_db
def test_a_continued_job_whose_model_is_gone_fails_saying_so(owner, stand_in):
    source = make_job(owner, name="First run")
    TrainingJob.objects.filter(pk=source.pk).update(status=JobStatus.COMPLETED, model_prefix="gone/model")
    job = make_job(owner, source.dataset, continued_from=source)

    local.run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message.startswith("Could not fetch what this job starts from:")
    assert "missing from storage" in job.status_message


# --- The real script ---------------------------------------------------------------------------

ENGINE = Path(settings.BASE_DIR) / "training_scripts" / "engine.py"
SCRIPT_RESUMES = "resumed_from_step" in ENGINE.read_text()


@pytest.mark.skipif(
    not SCRIPT_RESUMES,
    reason="the training script does not resume yet (no resumed_from_step in training_scripts/engine.py: "
    "the script side of issue 14 item 2 is not merged in this checkout)",
)
@pytest.mark.django_db(transaction=True)
def test_the_real_script_stopped_mid_way_then_resumed_ends_at_the_same_total_steps(owner):
    job = make_job(owner)
    # Enough steps that the stop (seen at the worker's next heartbeat) comes well before the end.
    hyperparameters = {**job.hyperparameters, "max_steps": 200, "save_steps": 5, "logging_steps": 1}
    TrainingJob.objects.filter(pk=job.pk).update(hyperparameters=hyperparameters)

    def run_then_close_the_threads_connection():
        try:
            local.run_job(job.pk)
        finally:
            connections.close_all()

    runner = threading.Thread(target=run_then_close_the_threads_connection)
    runner.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status == JobStatus.TRAINING and job.step >= 7:
            break
        time.sleep(0.2)
    assert lifecycle.request_stop(job)
    runner.join(90)
    assert not runner.is_alive()
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert 0 < job.step < 200
    stored = checkpoints.latest_step(job)
    assert stored is not None and stored >= 5, "the stopped run left a checkpoint in storage"

    new, made = actions.retry_job(job)
    assert made and new.resumed_at_step == stored
    local.run_job(new.pk)

    new.refresh_from_db()
    assert new.status == JobStatus.COMPLETED, new.status_message
    assert new.step == new.total_steps == 200
    assert new.resumed_at_step == stored > 0
    texts = list(LogLine.objects.filter(job=new).values_list("text", flat=True))
    assert any(text.endswith(f"resumed from the checkpoint at step {stored}") for text in texts)
    trained = [int(m[1]) for text in texts if (m := re.match(r"step (\d+)/200 ", text))]
    assert min(trained) == stored + 1  # the second run trained only the steps left
    steps = list(
        MetricPoint.objects.filter(job=new, loss__isnull=False).order_by("id").values_list("step", flat=True)
    )
    assert steps == sorted(set(steps)) and steps[-1] == 200  # one curve, each step once
    assert min(s for s in steps if s > stored) == stored + 1
