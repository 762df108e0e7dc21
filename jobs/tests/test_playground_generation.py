"""The playground on real (tiny) models: a job trained here by the local backend, a LoRA adapter on a
pretrained base, and a seq2seq model. Nothing is downloaded: pretrained bases are local folders."""

from __future__ import annotations

import gzip
import io
import re
import shutil
from pathlib import Path

import pytest
from django.utils import timezone

from datasets_app.models import Dataset
from datasets_app.preparation import VENDORED_TOKENIZER
from jobs import artifacts
from jobs.backends import local
from jobs.models import BaseModel, JobStatus, PlaygroundRun, PlaygroundStatus, TrainingJob
from jobs.playground import runs
from jobs.playground.cache import MODEL_CACHE
from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_job
from llmtuner import storage

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def model_cache_dir(settings, tmp_path):
    settings.PLAYGROUND_CACHE_DIR = tmp_path / "model-cache"
    MODEL_CACHE.clear()
    yield settings.PLAYGROUND_CACHE_DIR
    MODEL_CACHE.clear()


def train(job: TrainingJob) -> TrainingJob:
    local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    return job


def ask(job: TrainingJob, prompt: str, **settings) -> PlaygroundRun:
    values = {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, **settings}
    run = PlaygroundRun.objects.create(job=job, prompt=prompt, base_label=runs.base_label(job), **values)
    runs.run_generation(run.pk)
    run.refresh_from_db()
    return run


def gpt2_tokenizer(folder: Path):
    from transformers import PreTrainedTokenizerFast

    raw = folder / "gpt2-tokenizer.json"
    raw.write_bytes(gzip.decompress(VENDORED_TOKENIZER.read_bytes()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(raw),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    raw.unlink()
    return tokenizer


def tiny_pretrained(folder: Path, seq2seq: bool = False, always_says: str = "") -> Path:
    """A small random-weight model saved like a Hub checkpoint, standing in for one.

    With `always_says`, a GPT-2 whose every next token is that text's one token.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    folder.mkdir(parents=True)
    tokenizer = gpt2_tokenizer(folder)
    torch.manual_seed(1)
    if seq2seq:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        config = T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        model = T5ForConditionalGeneration(config)
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        model = GPT2LMHeadModel(config)
        if always_says:
            (token,) = tokenizer(always_says).input_ids
            with torch.no_grad():  # a constant final state, against embeddings all zero but one
                model.transformer.ln_f.weight.zero_()
                model.transformer.ln_f.bias.fill_(1.0)
                model.lm_head.weight.zero_()
                model.lm_head.weight[token] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def store_as_tuned_model(job: TrainingJob, folder: Path) -> TrainingJob:
    prefix = f"{job.storage_prefix()}/model"
    for path in folder.rglob("*"):
        if path.is_file():
            storage.save_path(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, model_prefix=prefix, finished_at=timezone.now()
    )
    job.refresh_from_db()
    return job


def local_base(folder: Path, **fields) -> BaseModel:
    return BaseModel.objects.create(
        name="Tiny local", hub_id=str(folder), family="GPT-2", parameters=1_700_000, context_length=128,
        licence="MIT", **fields,
    )  # fmt: skip


def test_a_scratch_job_answers_beside_its_untrained_baseline(owner, settings):
    job = train(make_job(owner))

    run = ask(job, "The quick brown")

    assert run.status == PlaygroundStatus.DONE, run.error
    assert run.tuned_output.strip() and run.base_output.strip()
    assert "fox" in run.tuned_output or "lazy" in run.tuned_output  # it learnt its proverbs
    assert run.base_label.startswith("Untrained baseline")
    assert run.tuned_tokens > 0 and run.base_tokens > 0
    assert run.tuned_seconds > 0 and run.base_seconds > 0 and run.load_seconds > 0
    assert run.started_at <= run.finished_at

    # Both models stay loaded in this process: a second prompt loads nothing, and the
    # untrained baseline is the same random model (fixed seed), so greedy answers repeat.
    again = ask(job, "The quick brown")
    assert again.status == PlaygroundStatus.DONE
    assert (again.tuned_output, again.base_output) == (run.tuned_output, run.base_output)
    assert again.load_seconds < run.load_seconds
    assert len(MODEL_CACHE.keys()) == 2

    # With room for one model, each is unloaded to make room for the other, and the
    # reloaded baseline is still the same random model.
    settings.PLAYGROUND_CACHE_MODELS = 1
    single = ask(job, "The quick brown")
    assert (single.tuned_output, single.base_output) == (run.tuned_output, run.base_output)
    assert MODEL_CACHE.keys() == [f"untrained:{job.pk}:{artifacts.model_identity(job)}"]

    sampled = ask(job, "A stitch", temperature=1.2, top_p=0.9, max_new_tokens=500)
    assert sampled.status == PlaygroundStatus.DONE, sampled.error
    # The scratch model reads 64 tokens at a time: the answer was capped, and the run says so.
    cap = re.search(
        r"reads at most 64 tokens at a time, so answers were capped at (\d+) new tokens", sampled.notes
    )
    assert cap and int(cap.group(1)) < 64
    assert sampled.tuned_tokens <= int(cap.group(1)) and sampled.base_tokens <= int(cap.group(1))


def test_a_lora_adapter_answers_beside_its_base_with_the_adapter_off(owner, tmp_path):
    base = local_base(tiny_pretrained(tmp_path / "tiny-base"))
    hyperparameters = {
        **TINY_HYPERPARAMETERS, "base_model": base.hub_id, "method": "lora", "merge_adapter": False,
        "learning_rate": 0.01, "max_steps": 6, "num_sample_generations": 0,
    }  # fmt: skip
    job = train(make_job(owner, base_model=base, method="lora", hyperparameters=hyperparameters))
    assert storage.exists(f"{job.model_prefix}/adapter_config.json")

    run = ask(job, "The quick brown")

    assert run.status == PlaygroundStatus.DONE, run.error
    assert run.base_label == f"Base model ({base.hub_id}, the adapter switched off)"
    assert run.tuned_tokens > 0 and run.base_tokens > 0
    assert run.tuned_output != run.base_output  # the adapter changed what the model says
    assert MODEL_CACHE.keys() == [f"tuned:{job.pk}:{artifacts.model_identity(job)}"]


def test_a_full_fine_tune_of_a_pretrained_model_loads_its_base_separately(owner, tmp_path):
    base = local_base(tiny_pretrained(tmp_path / "tiny-base"))
    job = make_job(
        owner, base_model=base, hyperparameters={**TINY_HYPERPARAMETERS, "base_model": base.hub_id}
    )
    # The "tuned" model here is the base itself, so both greedy answers must agree token for token.
    job = store_as_tuned_model(job, tmp_path / "tiny-base")

    run = ask(job, "All that glitters", max_new_tokens=8)

    assert run.status == PlaygroundStatus.DONE, run.error
    assert run.base_label == f"Base model ({base.hub_id})"
    assert run.tuned_tokens == run.base_tokens == 8
    assert run.tuned_output == run.base_output
    assert sorted(MODEL_CACHE.keys()) == sorted(
        [f"tuned:{job.pk}:{artifacts.model_identity(job)}", f"base:{base.hub_id}"]
    )


def test_a_nul_the_model_says_is_shown_as_a_replacement_character(owner, tmp_path):
    base = local_base(tiny_pretrained(tmp_path / "tiny-base", always_says="\x00"))
    job = make_job(
        owner, base_model=base, hyperparameters={**TINY_HYPERPARAMETERS, "base_model": base.hub_id}
    )
    job = store_as_tuned_model(job, tmp_path / "tiny-base")

    run = ask(job, "Say nothing", max_new_tokens=3)

    # PostgreSQL refuses NUL in text: the answer must still be saved, and shown.
    assert run.status == PlaygroundStatus.DONE, run.error
    assert run.tuned_output == run.base_output == "\N{REPLACEMENT CHARACTER}" * 3


def test_a_seq2seq_model_answers_through_the_seq2seq_class(owner, tmp_path):
    base = local_base(tiny_pretrained(tmp_path / "tiny-t5", seq2seq=True), architecture="seq2seq")
    job = make_job(
        owner, base_model=base, hyperparameters={**TINY_HYPERPARAMETERS, "base_model": base.hub_id}
    )
    job = store_as_tuned_model(job, tmp_path / "tiny-t5")

    run = ask(job, "Translate: a stitch in time", max_new_tokens=6, temperature=0.9, top_p=0.95)

    assert run.status == PlaygroundStatus.DONE, run.error
    assert run.tuned_output == run.base_output  # same weights, same seed
    assert 0 < run.tuned_tokens <= 6


def test_a_base_model_that_cannot_be_loaded_fails_the_run_but_keeps_the_tuned_answer(owner, tmp_path):
    base = local_base(tmp_path / "tiny-base")
    tiny_pretrained(tmp_path / "tiny-base")
    job = make_job(
        owner, base_model=base, hyperparameters={**TINY_HYPERPARAMETERS, "base_model": base.hub_id}
    )
    job = store_as_tuned_model(job, tmp_path / "tiny-base")
    shutil.rmtree(tmp_path / "tiny-base")  # the base is gone from this machine

    run = ask(job, "The quick", max_new_tokens=4)

    assert run.status == PlaygroundStatus.FAILED
    assert run.error.startswith(f"Could not load the base model '{base.hub_id}'")
    assert "HF_TOKEN" in run.error
    assert run.tuned_tokens == 4 and run.base_output == ""


def test_chat_shaped_data_sends_the_prompt_through_the_chat_template(tmp_path):
    from jobs.playground import generation

    tokenizer = gpt2_tokenizer(tmp_path)
    request = generation.Request(
        prompt="Hi there", max_new_tokens=4, temperature=0, top_p=1, seed=1, chat=True
    )

    assert generation.render_prompt(tokenizer, request) == ("user: Hi there\nassistant: ", False)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert generation.render_prompt(tokenizer, request) == ("<|user|>Hi there\n<|assistant|>", True)
    plain = generation.Request(prompt="Hi there", max_new_tokens=4, temperature=0, top_p=1, seed=1)
    assert generation.render_prompt(tokenizer, plain) == ("Hi there", False)


def test_is_chat_follows_the_datasets_shape(owner):
    job = make_job(owner)
    assert not runs.is_chat(job)
    Dataset.objects.filter(pk=job.dataset_id).update(stats={"shape": "messages"})
    job.refresh_from_db()
    assert runs.is_chat(job)


def test_a_model_file_bigger_than_one_copy_chunk_arrives_intact(owner, tmp_path):
    job = make_job(owner)
    blob = bytes(range(256)) * 20_000
    storage.save(f"{job.storage_prefix()}/model/config.json", io.BytesIO(b"{}"))
    storage.save(f"{job.storage_prefix()}/model/model.safetensors", io.BytesIO(blob))
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, model_prefix=f"{job.storage_prefix()}/model", finished_at=timezone.now()
    )
    job.refresh_from_db()

    folder = artifacts.fetch(job, tmp_path / "fetched")

    assert (folder / "model.safetensors").read_bytes() == blob
