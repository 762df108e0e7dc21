"""A job's tuned model, for both backends: where it is, fetching it safely, its files and its zip."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import pytest

from jobs import artifacts
from jobs.artifacts import ModelArtifactsError, UnsafeArchive
from jobs.models import Backend
from jobs.tests.conftest import completed, make_job, sagemaker_job, tar_gz
from llmtuner import storage

pytestmark = pytest.mark.django_db


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


# --- Where it is -----------------------------------------------------------------------------


def test_a_local_job_has_its_model_under_its_prefix_and_a_sagemaker_job_at_its_uri(owner):
    local = completed(make_job(owner))
    cloud = completed(
        make_job(owner, backend=Backend.SAGEMAKER),
        model_prefix="",
        model_artifacts_uri="s3://b/out/model.tar.gz",
    )

    assert artifacts.locate(local) == f"{local.storage_prefix()}/model/"
    assert artifacts.locate(cloud) == "s3://b/out/model.tar.gz"


@pytest.mark.parametrize(
    ("backend", "fields", "message"),
    [
        (Backend.LOCAL, {"model_prefix": ""}, "no tuned model was saved"),
        (Backend.SAGEMAKER, {"model_prefix": ""}, "SageMaker has not reported where its model was saved"),
        (
            Backend.SAGEMAKER,
            {"model_artifacts_uri": "https://x/model.tar.gz"},
            "is not an s3://bucket/key URI",
        ),
    ],
)
def test_a_completed_job_without_a_usable_model_location_says_why(owner, backend, fields, message):
    job = completed(make_job(owner, backend=backend), **fields)

    with pytest.raises(ModelArtifactsError, match=message):
        artifacts.locate(job)


def test_a_job_that_has_not_completed_has_no_model(owner):
    job = make_job(owner, model_prefix="somewhere")

    with pytest.raises(ModelArtifactsError, match="it has no tuned model yet"):
        artifacts.locate(job)


# --- Fetching a local job's model from storage --------------------------------------------


def test_a_local_jobs_model_is_copied_from_storage(owner, tmp_path):
    job = completed(make_job(owner))
    for name, data in {"config.json": b"{}", "nested/extra.bin": b"\0\1"}.items():
        storage.save(f"{job.model_prefix}/{name}", io.BytesIO(data))

    folder = artifacts.fetch(job, tmp_path / "fetched")

    assert folder == tmp_path / "fetched"
    assert files_under(folder) == ["config.json", "nested/extra.bin"]
    assert (folder / "nested" / "extra.bin").read_bytes() == b"\0\1"


def test_a_missing_stored_model_is_a_clear_error(owner, tmp_path):
    job = completed(make_job(owner))

    with pytest.raises(ModelArtifactsError, match="missing from storage"):
        artifacts.fetch(job, tmp_path / "fetched")


@pytest.fixture
def s3_default_storage(sagemaker_output, settings):
    sagemaker_output.create_bucket(Bucket="llmtuner-files")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "llmtuner-files", "region_name": "us-east-1", "location": "media"},
        },
    }
    assert storage.is_s3()


def test_a_local_jobs_model_comes_from_s3_when_that_is_the_default_storage(
    owner, s3_default_storage, tmp_path
):
    job = completed(make_job(owner))
    storage.save(f"{job.model_prefix}/config.json", io.BytesIO(b'{"model_type": "gpt2"}'))
    storage.save(f"{job.model_prefix}/tokenizer/vocab.json", io.BytesIO(b"{}"))

    folder = artifacts.fetch(job, tmp_path / "fetched")

    assert (folder / "config.json").read_bytes() == b'{"model_type": "gpt2"}'
    assert files_under(folder) == ["config.json", "tokenizer/vocab.json"]
    # The listing gives our own keys, without the storage's location in front.
    assert storage.list_keys(f"{job.model_prefix}/") == [
        f"{job.model_prefix}/config.json",
        f"{job.model_prefix}/tokenizer/vocab.json",
    ]


# --- Fetching a SageMaker job's model.tar.gz ---------------------------------------------------


def test_a_sagemaker_jobs_model_tar_gz_is_streamed_and_unpacked(owner, sagemaker_output, tmp_path):
    job = sagemaker_job(
        owner,
        sagemaker_output,
        tar_gz({"config.json": b'{"model_type": "gpt2"}', "./tokenizer.json": b"{}", "sub/x.txt": b"x"}),
    )

    work = tmp_path / "work"
    folder = artifacts.fetch(job, work / "model")

    assert folder == work / "model"
    assert (folder / "config.json").read_bytes() == b'{"model_type": "gpt2"}'
    assert files_under(folder) == ["config.json", "sub/x.txt", "tokenizer.json"]
    assert sorted(p.name for p in work.iterdir()) == ["model"]  # no archive was left behind


def test_a_sagemaker_archive_is_read_through_the_default_storages_connection_when_that_is_s3(
    owner, sagemaker_output, s3_default_storage, tmp_path
):
    job = sagemaker_job(owner, sagemaker_output, tar_gz({"config.json": b"{}"}))

    assert files_under(artifacts.fetch(job, tmp_path / "fetched")) == ["config.json"]


def test_an_archive_that_wraps_the_model_in_one_folder_loads_from_that_folder(
    owner, sagemaker_output, tmp_path
):
    job = sagemaker_job(owner, sagemaker_output, tar_gz({"model/config.json": b"{}", "model/w.bin": b"w"}))

    assert artifacts.fetch(job, tmp_path / "fetched") == tmp_path / "fetched" / "model"


@pytest.mark.parametrize(
    "bad_name", ["../escaped.txt", "model/../../escaped.txt", "/tmp/escaped.txt", "..", "C:/escaped.txt"]
)
def test_archive_members_that_would_land_outside_are_refused(owner, sagemaker_output, tmp_path, bad_name):
    job = sagemaker_job(owner, sagemaker_output, tar_gz({"config.json": b"{}", bad_name: b"gotcha"}))
    destination = tmp_path / "out" / "model"

    with pytest.raises(UnsafeArchive, match="would land outside the model folder"):
        artifacts.fetch(job, destination)

    assert not (tmp_path / "out" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped.txt").exists()


def test_archive_links_are_refused(owner, sagemaker_output, tmp_path):
    job = sagemaker_job(
        owner, sagemaker_output, tar_gz({"config.json": b"{}"}, links={"weights.bin": "/etc/passwd"})
    )

    with pytest.raises(UnsafeArchive, match="holds a link"):
        artifacts.fetch(job, tmp_path / "out")

    assert not (tmp_path / "out" / "weights.bin").exists()


@pytest.mark.parametrize(
    "damaged",
    [b"\x1f\x8b not really gzip", tar_gz({"model.safetensors": random.Random(0).randbytes(20_000)})[:5000]],
)
def test_a_damaged_archive_is_a_clear_error(owner, sagemaker_output, tmp_path, damaged):
    job = sagemaker_job(owner, sagemaker_output, damaged)

    with pytest.raises(ModelArtifactsError, match="could not be read"):
        artifacts.fetch(job, tmp_path / "out")


def test_a_missing_sagemaker_archive_is_a_clear_error(owner, sagemaker_output, tmp_path):
    job = sagemaker_job(owner, sagemaker_output, None, key="nothing/model.tar.gz")

    with pytest.raises(ModelArtifactsError, match="Could not download the tuned model from s3://"):
        artifacts.fetch(job, tmp_path / "model")


# --- Its files and its zip, the same for both backends ---------------------------------------------

MODEL = {"config.json": b'{"n_layer": 2}', "model.safetensors": b"w" * 5000, "tokenizer/vocab.json": b"{}"}


def test_both_backends_list_the_same_files_and_zip_them_the_same_way(owner, sagemaker_output):
    local = completed(make_job(owner))
    for name, data in MODEL.items():
        storage.save(f"{local.model_prefix}/{name}", io.BytesIO(data))
    cloud = sagemaker_job(
        owner, sagemaker_output, tar_gz({f"./{name}": data for name, data in MODEL.items()})
    )

    for job in (local, cloud):
        assert sorted((f.name, f.size) for f in artifacts.model_files(job)) == sorted(
            (name, len(data)) for name, data in MODEL.items()
        )
        archive = zipfile.ZipFile(io.BytesIO(b"".join(artifacts.zip_stream(job, "tiny"))))
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist() if name != "tiny/README.md"} == {
            f"tiny/{name}": data for name, data in MODEL.items()
        }
        assert archive.read("tiny/README.md").startswith(b"---\n")  # the model card, last


def test_a_sagemaker_zip_is_checked_before_a_byte_is_sent_and_read_only_as_it_is_sent(
    owner, sagemaker_output, monkeypatch
):
    missing = sagemaker_job(owner, sagemaker_output, None, key="gone/model.tar.gz")
    with pytest.raises(ModelArtifactsError):
        artifacts.zip_stream(missing, "tiny")

    job = sagemaker_job(owner, sagemaker_output, tar_gz(MODEL))
    opened = []
    real_open_uri = storage.open_uri
    monkeypatch.setattr(storage, "open_uri", lambda uri: opened.append(uri) or real_open_uri(uri))

    chunks = artifacts.zip_stream(job, "tiny")
    assert opened == []  # nothing read yet: the response can start at once
    first = next(chunks)
    assert first.startswith(b"PK") and opened == [job.model_artifacts_uri]
