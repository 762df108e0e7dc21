"""jobs/checkpoints.py: a job's checkpoints in storage, on local media and on S3 (moto), the same way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from jobs import checkpoints
from jobs.tests.conftest import make_job
from llmtuner import storage

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["local", "s3"])
def any_storage(request, settings, fake_aws_credentials):
    """Each test runs on local media, then on S3 with a storage location (as production may set)."""
    if request.param == "local":
        yield request.param
        return
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="llmtuner-files")
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {"bucket_name": "llmtuner-files", "region_name": "us-east-1", "location": "media"},
            },
        }
        assert storage.is_s3()
        yield request.param


def write_checkpoint(folder: Path, step: int, complete: bool = True, name: str | None = None) -> Path:
    """A checkpoint folder as the training script leaves it (state.json written last)."""
    path = folder / (name or f"checkpoint-{step}")
    (path / "optimizer").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(f"weights at {step}".encode())
    (path / "optimizer" / "state.pt").write_bytes(b"adam")
    if complete:
        (path / "state.json").write_text(json.dumps({"step": step}))
    return path


def store(prefix: str, step: int, complete: bool = True) -> None:
    storage.save(f"{prefix}checkpoint-{step}/model.safetensors", io.BytesIO(f"weights at {step}".encode()))
    if complete:
        storage.save(f"{prefix}checkpoint-{step}/state.json", io.BytesIO(json.dumps({"step": step}).encode()))


def test_a_new_job_keeps_its_checkpoints_under_its_own_prefix(owner):
    job = make_job(owner)
    assert checkpoints.prefix(job) == f"users/{owner.pk}/jobs/{job.pk}/checkpoints/"
    assert checkpoints.latest_step(job) is None


def test_the_newest_complete_checkpoint_is_found_and_a_half_stored_one_is_not(owner, any_storage):
    job = make_job(owner)
    prefix = checkpoints.prefix(job)
    store(prefix, 10)
    store(prefix, 20)
    store(prefix, 30, complete=False)  # its upload was cut short: no state.json
    storage.save(f"{prefix}checkpoint-40.tmp/state.json", io.BytesIO(b"{}"))  # never a checkpoint
    storage.save(f"{prefix}notes/state.json", io.BytesIO(b"{}"))

    assert checkpoints.stored_steps(prefix) == [10, 20]
    assert checkpoints.latest_step(job) == 20


def test_a_run_stores_its_newest_checkpoint_state_last_and_keeps_two(owner, any_storage, tmp_path):
    job = make_job(owner)
    prefix = checkpoints.prefix(job)
    run = tmp_path / "checkpoints"
    for step in (5, 10):
        write_checkpoint(run, step)
        assert checkpoints.upload_latest(job, run) == step
    write_checkpoint(run, 15, complete=False)  # being written: not yet a checkpoint
    write_checkpoint(run, 20, name="checkpoint-20.tmp")
    assert checkpoints.upload_latest(job, run) is None  # nothing new that is complete

    write_checkpoint(run, 25)
    assert checkpoints.upload_latest(job, run) == 25

    assert checkpoints.stored_steps(prefix) == [10, 25]  # the newest two
    assert storage.list_keys(f"{prefix}checkpoint-25/") == [
        f"{prefix}checkpoint-25/model.safetensors",
        f"{prefix}checkpoint-25/optimizer/state.pt",
        f"{prefix}checkpoint-25/state.json",
    ]
    assert not storage.list_keys(f"{prefix}checkpoint-5/")


def test_an_upload_cut_short_is_redone_whole(owner, any_storage, tmp_path):
    job = make_job(owner)
    prefix = checkpoints.prefix(job)
    store(prefix, 7, complete=False)  # a worker died while it stored checkpoint-7
    write_checkpoint(tmp_path, 7)

    assert checkpoints.upload_latest(job, tmp_path) == 7

    assert checkpoints.stored_steps(prefix) == [7]
    with storage.open_stream(f"{prefix}checkpoint-7/model.safetensors") as stream:
        assert stream.read() == b"weights at 7"


def test_the_next_attempt_gets_the_same_files_back(owner, any_storage, tmp_path):
    job = make_job(owner)
    write_checkpoint(tmp_path / "first", 12)
    checkpoints.upload_latest(job, tmp_path / "first")
    attempt = make_job(owner, job.dataset, checkpoint_prefix=checkpoints.prefix(job))

    step = checkpoints.download_latest(attempt, tmp_path / "second")

    assert step == 12
    got = tmp_path / "second" / "checkpoint-12"
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "model.safetensors",
        "optimizer/state.pt",
        "state.json",
    ]
    assert (got / "model.safetensors").read_bytes() == b"weights at 12"
    assert json.loads((got / "state.json").read_text()) == {"step": 12}
    assert not list((tmp_path / "second").glob("*.tmp"))


def test_nothing_to_download_leaves_the_folder_empty(owner, any_storage, tmp_path):
    job = make_job(owner)
    (tmp_path / "run").mkdir()
    assert checkpoints.download_latest(job, tmp_path / "run") is None
    assert not list((tmp_path / "run").iterdir())


def test_a_stored_name_that_would_leave_the_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside its folder"):
        checkpoints._inside(tmp_path / "checkpoint-3.tmp", "../../escaped")
    assert checkpoints._inside(tmp_path, "optimizer/state.pt") == (tmp_path / "optimizer/state.pt").resolve()


def test_a_chains_checkpoints_stay_while_an_attempt_uses_them_and_go_with_the_last(owner, any_storage):
    from jobs import actions
    from jobs.models import JobStatus, TrainingJob

    first = make_job(owner, status=JobStatus.STOPPED)
    chain = checkpoints.prefix(first)
    store(chain, 10)
    storage.save(f"{first.storage_prefix()}/model/config.json", io.BytesIO(b"{}"))
    second = make_job(owner, first.dataset, status=JobStatus.FAILED, checkpoint_prefix=chain, retry_of=first)

    actions.delete_job(first)

    assert not TrainingJob.objects.filter(pk=first.pk).exists()
    assert not storage.list_keys(f"{first.storage_prefix()}/model/")
    assert checkpoints.latest_step(second) == 10  # the second attempt can still resume

    actions.delete_job(second)

    assert not storage.list_keys(chain)
