"""The download that explains itself (issue 15 items 1 and 2): a real run's model folder, stored
as each backend stores it, downloads as a zip with the model card README.md, samples.json and
evaluation.json; the model in it loads with transformers and prompts as training did; a LoRA job
downloads the merged model or the adapter alone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobs import artifacts
from jobs.models import Method
from jobs.tests.conftest import completed, make_job, make_ready_dataset, sagemaker_job, tar_gz
from llmtuner import storage
from training_scripts.tests.helpers import SCRIPT, base_env, write_jsonl

pytestmark = pytest.mark.django_db

CHAT = [
    {
        "messages": [
            {"role": "user", "content": f"colour {c}?"},
            {"role": "assistant", "content": f"{c} {c}"},
        ]
    }
    for _ in range(12)
    for c in ("red", "green", "blue")
]


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory) -> Path:
    """What finetune.py leaves in its model dir after a short run on chat data."""
    root = tmp_path_factory.mktemp("run")
    train = write_jsonl(root / "data" / "train.jsonl", CHAT).parent
    val = write_jsonl(root / "val" / "validation.jsonl", CHAT[:6]).parent
    args = [
        *("--train_dir", train, "--validation_dir", val, "--model_dir", root / "model"),
        *("--output_dir", root / "out", "--max_steps", "4", "--max_seq_length", "64"),
        *("--eval_samples", "4", "--sample_max_new_tokens", "6", "--num_sample_generations", "2"),
    ]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [json.loads(line) for line in proc.stdout.splitlines() if '"event": "done"' in line][0]
    (root / "done.json").write_text(json.dumps(done))
    return root / "model"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def finished_like_the_run(job, folder: Path):
    """The job as the lifecycle leaves it: the done event's fields in metrics."""
    done = json.loads((folder.parent / "done.json").read_text())
    job.metrics = {k: v for k, v in done.items() if k != "event"}
    job.save(update_fields=["metrics"])
    return job


def unzip(job, variant=None, folder="tiny") -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(b"".join(artifacts.zip_stream(job, folder, variant))))
    assert archive.testzip() is None
    return {name.removeprefix(f"{folder}/"): archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("backend", ["local", "sagemaker"])
def test_the_zip_holds_the_model_card_samples_and_evaluation_and_loads(
    owner, trained_folder, backend, request, tmp_path
):
    files = folder_files(trained_folder)
    dataset = make_ready_dataset(owner, [{"text": "x"}] * 36, name="Colours chat")
    if backend == "local":
        job = completed(make_job(owner, dataset))
        for name, data in files.items():
            storage.save(f"{job.model_prefix}/{name}", io.BytesIO(data))
    else:
        client = request.getfixturevalue("sagemaker_output")
        job = sagemaker_job(owner, client, tar_gz({f"./{n}": d for n, d in files.items()}))
        job.dataset = dataset
        job.save(update_fields=["dataset"])
    job = finished_like_the_run(job, trained_folder)

    zipped = unzip(job)

    assert {
        "README.md",
        "samples.json",
        "evaluation.json",
        "model.safetensors",
        "tokenizer_config.json",
    } <= set(zipped)
    evaluation = json.loads(zipped["evaluation.json"])
    assert {"tuned", "base", "metrics", "samples"} <= set(evaluation)
    card = zipped["README.md"].decode()
    assert 'license: "MIT"' in card and "scratch:tiny-gpt2" in card
    assert "Colours chat (36 samples" in card
    assert "Full fine-tuning" in card
    assert "| max_steps | 30 |" in card  # the job's hyperparameters
    assert "| Exact match |" in card and "| Token F1 |" in card and "| ROUGE-L |" in card
    first = evaluation["samples"][0]
    assert f"```text\n{first['prompt']}\n```" in card  # the exact prompt of one real example
    assert "apply_chat_template" in card and "AutoModelForCausalLM" in card

    # The few lines of the card work on the unzipped folder, and prompt as training did.
    unpacked = tmp_path / "tiny"
    for name, data in zipped.items():
        (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
        (unpacked / name).write_bytes(data)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(unpacked)
    AutoModelForCausalLM.from_pretrained(unpacked)
    messages = [{"role": "user", "content": "colour red?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "user: colour red?\nassistant: "
    assert any(s["prompt"] == prompt for s in evaluation["samples"])


@pytest.fixture
def lora_job(owner):
    job = completed(make_job(owner, method=Method.LORA))
    files = {
        "config.json": b"{}",
        "model.safetensors": b"merged" * 100,
        "tokenizer.json": b"{}",
        "metrics.json": b"{}",
        "evaluation.json": json.dumps(
            {"tuned": {}, "base": {}, "metrics": [], "samples": [], "data_format": "text"}
        ).encode(),
        "samples.json": b"[]",
        "adapter/adapter_config.json": b'{"base_model_name_or_path": "org/base"}',
        "adapter/adapter_model.safetensors": b"adapter",
        "adapter/tokenizer.json": b"{}",
        "adapter/README.md": b"peft's card",
    }
    for name, data in files.items():
        storage.save(f"{job.model_prefix}/{name}", io.BytesIO(data))
    job.metrics = {"adapter_merged": True, "adapter_saved": True}
    job.hyperparameters = {**job.hyperparameters, "method": "lora"}
    job.save(update_fields=["metrics", "hyperparameters"])
    return job


def test_a_lora_job_downloads_the_merged_model_or_the_adapter_alone(lora_job):
    assert lora_job.export_variants == ["model", "adapter"]

    merged = unzip(lora_job)
    assert "model.safetensors" in merged and not any(n.startswith("adapter") for n in merged)
    assert "merged into its weights" in merged["README.md"].decode()

    adapter = unzip(lora_job, "adapter")
    assert sorted(adapter) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "evaluation.json",
        "metrics.json",
        "samples.json",
        "tokenizer.json",
    ]
    card = adapter["README.md"].decode()
    assert "AutoPeftModelForCausalLM" in card and "library_name: peft" in card and "peft's card" not in card


def test_the_job_page_offers_both_lora_downloads(owner_client, lora_job):
    page = owner_client.get(f"/jobs/{lora_job.pk}/").content.decode()
    assert "Download the merged model (.zip)" in page
    assert f'href="/jobs/{lora_job.pk}/download/?variant=adapter"' in page

    response = owner_client.get(f"/jobs/{lora_job.pk}/download/?variant=adapter")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="tiny-proverbs-adapter.zip"'


def test_a_download_the_job_does_not_offer_is_refused_with_a_reason(owner_client, owner):
    job = completed(make_job(owner))  # full fine-tuning: no adapter
    assert job.export_variants == ["model"]
    with pytest.raises(
        artifacts.ModelArtifactsError, match="download is the model, not the LoRA adapter alone"
    ):
        artifacts.zip_stream(job, "tiny", "adapter")
    assert owner_client.get(f"/jobs/{job.pk}/download/?variant=adapter").status_code == 404


def test_lora_saved_unmerged_and_scratch_lora_offer_one_download(owner):
    unmerged = make_job(owner, method=Method.LORA, metrics={"adapter_merged": False, "adapter_saved": True})
    scratch = make_job(owner, method=Method.LORA, metrics={"adapter_merged": True, "adapter_saved": False})
    assert unmerged.export_variants == ["adapter"]
    assert scratch.export_variants == ["model"]


def test_another_users_job_has_no_download(outsider_client, lora_job):
    assert outsider_client.get(f"/jobs/{lora_job.pk}/download/?variant=adapter").status_code == 404
