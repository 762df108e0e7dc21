"""The job page's evaluation (issue 15 item 4): tuned against base per metric and the scored
samples, paged, read back from the stored model of either backend; job_status --json gives it."""

from __future__ import annotations

import io
import json

import pytest
from django.core.cache import cache
from django.core.management import call_command

from jobs.tests.conftest import completed, make_job, sagemaker_job, tar_gz
from llmtuner import storage

pytestmark = pytest.mark.django_db


def evaluation_json(count: int) -> dict:
    samples = [
        {
            "prompt": f"colour {i}:",
            "reference": f" answer <{i}>",
            "tuned": f" answer <{i}>",
            "base": "::::",
            "scores": {
                "tuned": {"exact_match": 1.0, "token_f1": 1.0, "rougeL": 1.0},
                "base": {"exact_match": 0.0, "token_f1": 0.0, "rougeL": 0.0},
            },
        }
        for i in range(count)
    ]
    return {
        "tuned": {"exact_match": 0.9, "token_f1": 0.95, "rougeL": 0.93},
        "base": {"exact_match": 0.0, "token_f1": 0.05, "rougeL": 0.02},
        "metrics": ["exact_match", "token_f1", "rougeL"],
        "samples": samples,
        "data_format": "prompt_completion",
        "seconds": 1.5,
    }


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()


def local_job_with(owner, evaluation: dict | None):
    job = completed(make_job(owner))
    storage.save(f"{job.model_prefix}/config.json", io.BytesIO(b"{}"))
    if evaluation is not None:
        storage.save(f"{job.model_prefix}/evaluation.json", io.BytesIO(json.dumps(evaluation).encode()))
    return job


def test_the_job_page_loads_its_evaluation_tuned_against_base_and_pages_the_samples(owner_client, owner):
    job = local_job_with(owner, evaluation_json(23))

    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'hx-get="/jobs/{job.pk}/evaluation/"' in page

    body = owner_client.get(f"/jobs/{job.pk}/evaluation/").content.decode()
    assert '<th scope="row">Exact match</th><td>0.000</td><td>0.900</td>' in body
    assert '<th scope="row">ROUGE-L</th><td>0.020</td><td>0.930</td>' in body
    assert body.count("data-evaluation-sample") == 10
    assert "colour 0:" in body and "colour 10:" not in body
    assert " answer &lt;3&gt;" in body  # escaped, never markup
    assert "(1–10 of 23)" in body and "Page 1 of 3" in body

    last = owner_client.get(f"/jobs/{job.pk}/evaluation/?page=3").content.decode()
    assert last.count("data-evaluation-sample") == 3 and "colour 22:" in last
    assert owner_client.get(f"/jobs/{job.pk}/evaluation/?page=banana").status_code == 200  # the first page


def test_a_run_without_evaluation_says_so(owner_client, owner):
    job = local_job_with(owner, None)
    body = owner_client.get(f"/jobs/{job.pk}/evaluation/").content.decode()
    assert "wrote no evaluation" in body


def test_a_missing_model_is_a_message_not_a_500(owner_client, owner):
    job = completed(make_job(owner))  # nothing stored
    response = owner_client.get(f"/jobs/{job.pk}/evaluation/")
    assert response.status_code == 200
    assert "missing from storage" in response.content.decode()


def test_a_sagemaker_jobs_evaluation_is_read_back_from_its_model_archive_once(
    owner_client, owner, sagemaker_output, monkeypatch
):
    archive = tar_gz(
        {
            "./model.safetensors": b"w" * 1000,
            "./evaluation.json": json.dumps(evaluation_json(3)).encode(),
        }
    )
    job = sagemaker_job(owner, sagemaker_output, archive)
    opened = []
    real_open_uri = storage.open_uri
    monkeypatch.setattr(storage, "open_uri", lambda uri: opened.append(uri) or real_open_uri(uri))

    body = owner_client.get(f"/jobs/{job.pk}/evaluation/").content.decode()
    assert body.count("data-evaluation-sample") == 3 and "0.900" in body
    owner_client.get(f"/jobs/{job.pk}/evaluation/?page=1")
    assert opened == [job.model_artifacts_uri]  # kept after the first read


def test_another_users_job_evaluation_is_not_found(outsider_client, owner):
    job = local_job_with(owner, evaluation_json(2))
    assert outsider_client.get(f"/jobs/{job.pk}/evaluation/").status_code == 404


def test_job_status_json_gives_the_evaluation(owner):
    job = completed(make_job(owner))
    summary = {k: v for k, v in evaluation_json(0).items() if k != "samples"}
    job.metrics = {"train_loss": 1.0, "evaluation": {**summary, "samples": 50}}
    job.save(update_fields=["metrics"])
    plain = make_job(owner, name="No evaluation")
    out = io.StringIO()

    call_command("job_status", "--json", stdout=out)

    rows = {row["id"]: row for row in json.loads(out.getvalue())}
    assert rows[job.pk]["evaluation"] == {
        "tuned": {"exact_match": 0.9, "token_f1": 0.95, "rougeL": 0.93},
        "base": {"exact_match": 0.0, "token_f1": 0.05, "rougeL": 0.02},
        "samples": 50,
    }
    assert rows[plain.pk]["evaluation"] is None
