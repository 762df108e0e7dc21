"""finetune.py end to end: trained in a subprocess exactly as the backends run it.

Tiny models only (built here from configs, or scratch:tiny-gpt2); nothing is downloaded
(HF_HUB_OFFLINE=1 unless a test says otherwise).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training_scripts import progress
from training_scripts.hyperparameters import to_sagemaker_hyperparameters, validate_hyperparameters
from training_scripts.tests.helpers import (
    CHAT_ROWS,
    FAST,
    PC_ROWS,
    SCRIPT,
    TEXT_ROWS,
    assert_completed,
    assert_loss_falls,
    assert_outputs,
    base_env,
    corpus,
    flag_run,
    parse_stdout,
    run_finetune,
    train_tokenizer,
    write_jsonl,
)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny-t5")
    tok = train_tokenizer(
        corpus(PC_ROWS),
        specials=["<pad>", "</s>", "<unk>"],
        bos=None,
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        eos_suffix=True,
    )
    config = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- SageMaker contract


@pytest.fixture(scope="module")
def sagemaker_run(tmp_path_factory):
    """The script run the way the SageMaker training container runs it."""
    root = tmp_path_factory.mktemp("sm")
    write_jsonl(root / "input/data/train/train.jsonl", TEXT_ROWS)
    write_jsonl(root / "input/data/validation/validation.jsonl", TEXT_ROWS[:16])
    env = base_env(
        {
            "SM_CHANNEL_TRAIN": str(root / "input/data/train"),
            "SM_CHANNEL_VALIDATION": str(root / "input/data/validation"),
            "SM_MODEL_DIR": str(root / "model"),
            "SM_OUTPUT_DATA_DIR": str(root / "output/data"),
        }
    )
    hps = {
        "base_model": "scratch:tiny-gpt2",
        "method": "full",
        "max_steps": 30,
        "learning_rate": 2e-3,
        "batch_size": 8,
        "max_seq_length": 64,
        "packing": True,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.0,
        "logging_steps": 2,
        "eval_steps": 10,
        "num_sample_generations": 2,
        "sample_max_new_tokens": 12,
    }
    args = []
    for name, value in to_sagemaker_hyperparameters(hps).items():  # JSON-encoded, strings too
        args += [f"--{name}", value]
    assert '"scratch:tiny-gpt2"' in args
    run = run_finetune(args, env=env, cwd=root)
    return run, root


@pytest.mark.slow
def test_sagemaker_contract_text_end_to_end(sagemaker_run):
    run, root = sagemaker_run
    assert_completed(run)
    assert_loss_falls(run)
    evals = run.of("eval")
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[-1]["perplexity"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    done = run.one("done")
    assert done["step"] == 30 and done["tokens_per_second"] > 0 and done["model_dir"] == str(root / "model")
    progress_event = run.of("progress")[-1]
    assert progress_event["learning_rate"] >= 0 and progress_event["grad_norm"] > 0
    assert progress_event["eta_seconds"] == 0
    metrics = assert_outputs(root / "model", root / "output/data")
    assert metrics["status"] == "completed" and metrics["eval_loss"] == done["eval_loss"]
    used = json.loads((root / "model/hyperparameters.json").read_text())
    assert (
        used["learning_rate"] == 2e-3
        and used["packing"] is True
        and used["base_model"] == "scratch:tiny-gpt2"
    )
    assert validate_hyperparameters(used)[1] == {}  # the values used round-trip through the validator
    # the model and tokenizer load back with transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "model")
    tok = AutoTokenizer.from_pretrained(root / "model")
    assert model.config.model_type == "gpt2" and 2000 > len(tok) > 100
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_metric_definitions_match_real_output(sagemaker_run):
    run, _ = sagemaker_run
    lines = run.stdout.splitlines()
    seen = set()
    for line, event in zip(lines, run.events, strict=True):
        found = progress.match_metrics(line)
        seen |= set(found)
        if event["event"] == "progress":
            assert found["train:loss"] == pytest.approx(event["loss"])
            assert found["train:learning_rate"] == pytest.approx(event["learning_rate"])
            assert found["train:grad_norm"] == pytest.approx(event["grad_norm"])
            assert found["train:tokens_per_second"] == pytest.approx(event["tokens_per_second"])
            assert found["train:epoch"] == pytest.approx(event["epoch"])
            assert not any(k.startswith("eval:") for k in found)
        elif event["event"] == "eval":
            assert found == {
                "eval:loss": pytest.approx(event["eval_loss"]),
                "eval:perplexity": pytest.approx(event["perplexity"]),
            }
        else:
            assert found == {}, line
        assert progress.parse_event("2025-01-01T00:00:00Z " + line) == event
    assert seen == {d["Name"] for d in progress.METRIC_DEFINITIONS}


# ----------------------------------------------------------------------------- sample shapes


@pytest.mark.slow
def test_prompt_completion_trains_on_completions(tmp_path):
    run, model_dir, out_dir = flag_run(
        tmp_path,
        PC_ROWS,
        *("--max_steps", "25", "--learning_rate", "3e-3", "--gradient_accumulation_steps", "2"),
        *("--save_steps", "10", "--checkpoint_dir", tmp_path / "ckpt"),
        validation_rows=PC_ROWS[:10],
    )
    assert_completed(run)
    assert_loss_falls(run)
    assert len(run.of("eval")) >= 2
    assert [(e["step"], e["path"]) for e in run.of("checkpoint")] == [
        (10, str(tmp_path / "ckpt/checkpoint-10")),
        (20, str(tmp_path / "ckpt/checkpoint-20")),
    ]
    assert (tmp_path / "ckpt/checkpoint-20/model.safetensors").exists()
    assert_outputs(model_dir, out_dir)
    samples = json.loads((out_dir / "samples.json").read_text())
    assert samples[0]["prompt"].startswith("Question:") and samples[0]["reference"].startswith(" item")


@pytest.mark.slow
def test_chat_messages_without_packing(tmp_path):
    run, model_dir, out_dir = flag_run(
        tmp_path,
        CHAT_ROWS,
        *("--max_steps", "20", "--learning_rate", "3e-3", "--packing", "false"),
        *("--gradient_checkpointing", "true"),
    )
    assert_completed(run)
    assert_loss_falls(run)
    start = run.one("start")
    assert start["packing"] is False and start["eval_samples"] == 6  # 5% held out: no validation data given
    assert run.of("eval")
    assert_outputs(model_dir, out_dir)
    samples = json.loads((out_dir / "samples.json").read_text())
    assert samples[0]["prompt"].endswith("assistant: ") and samples[0]["reference"].startswith("hello person")


# ----------------------------------------------------------------------------- other architectures


@pytest.mark.slow
def test_lora_on_local_llama_keeps_adapter_separate(tmp_path, tiny_llama):
    run, model_dir, out_dir = flag_run(
        tmp_path,
        CHAT_ROWS,
        "--base_model",
        tiny_llama,
        "--method",
        "lora",
        "--lora_r",
        "8",
        "--learning_rate",
        "2e-2",
        "--max_steps",
        "20",
        "--merge_adapter",
        "false",
        validation_rows=CHAT_ROWS[:8],
    )
    assert_completed(run)
    assert_loss_falls(run, factor=0.95)  # only the adapters of a random model learn: slowly
    evals = run.of("eval")
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    start = run.one("start")
    assert start["trainable_parameters"] < start["total_parameters"] / 5
    assert start["lora_target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert_outputs(model_dir, out_dir, weights="adapter_model.safetensors")
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_llama)
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    samples = json.loads((out_dir / "samples.json").read_text())
    assert samples[0]["prompt"].endswith("<|im_start|>assistant\n")  # the chat template was used


@pytest.mark.slow
def test_seq2seq_t5_lora_merged(tmp_path, tiny_t5):
    run, model_dir, out_dir = flag_run(
        tmp_path,
        PC_ROWS,
        "--base_model",
        tiny_t5,
        "--method",
        "lora",
        "--lora_r",
        "8",
        "--learning_rate",
        "1e-2",
        "--max_steps",
        "20",
        validation_rows=PC_ROWS[:8],
    )
    assert_completed(run)
    assert_loss_falls(run, factor=0.85)
    start = run.one("start")
    assert start["seq2seq"] is True and start["lora_target_modules"] == ["q", "v"]
    metrics = assert_outputs(model_dir, out_dir)
    assert metrics["adapter_merged"] is True
    assert not (model_dir / "adapter_config.json").exists()
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())


# ----------------------------------------------------------------------------- failures


def test_bad_hyperparameters_error_event_names_fields(tmp_path):
    write_jsonl(tmp_path / "train/train.jsonl", TEXT_ROWS[:4])
    run = run_finetune(
        ["--train_dir", tmp_path / "train", "--learning_rate", "5", "--lora_r", "0", "--optimiser", "sgd"],
        cwd=tmp_path,
    )
    assert run.returncode == 2
    [event] = run.events
    assert event["event"] == "error"
    assert set(event["errors"]) == {"learning_rate", "lora_r", "optimiser"}
    assert "learning_rate: must be a number greater than 0 and at most 1 (got '5')" in event["message"]
    assert "lora_r: must be an integer between 1 and 1024" in event["message"]
    assert "unknown hyperparameter 'optimiser'" in event["message"]
    assert not (tmp_path / "model").exists()


def test_missing_training_data(tmp_path):
    run = run_finetune(["--learning_rate", "1e-3"], cwd=tmp_path)
    assert run.returncode == 2
    assert run.events[-1]["event"] == "error" and "SM_CHANNEL_TRAIN" in run.events[-1]["message"]


@pytest.mark.slow
def test_bad_data_line_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "train/train.jsonl", TEXT_ROWS[:3])
    with path.open("a") as fh:
        fh.write('{"question": "no shape"}\n')
    run = run_finetune(["--train_dir", tmp_path / "train"], cwd=tmp_path)
    assert run.returncode == 1
    [event] = [e for e in run.events if e["event"] != "phase"]
    assert event["event"] == "error" and event["message"].startswith("train.jsonl line 4:")


@pytest.mark.slow
@pytest.mark.parametrize("offline", [True, False], ids=["offline", "network-or-not"])
def test_unknown_hub_model_fails_fast(tmp_path, offline):
    write_jsonl(tmp_path / "train/train.jsonl", TEXT_ROWS[:8])
    env = base_env({"HF_HUB_OFFLINE": "1"} if offline else {})
    if not offline:
        env.pop("HF_HUB_OFFLINE")
    run = run_finetune(
        ["--train_dir", tmp_path / "train", "--base_model", "no-such-org/no-such-model-xyz"],
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 1
    [event] = [e for e in run.events if e["event"] != "phase"]
    assert event["event"] == "error"
    assert "'no-such-org/no-such-model-xyz'" in event["message"]
    assert "check the model id" in event["message"]
    assert run.seconds < 60


@pytest.mark.slow
def test_sigterm_stops_after_current_step(tmp_path):
    write_jsonl(tmp_path / "train/train.jsonl", TEXT_ROWS)
    args = [sys.executable, str(SCRIPT), "--train_dir", tmp_path / "train", "--model_dir", tmp_path / "model"]
    args += ["--output_dir", tmp_path / "out", *FAST, "--max_steps", "100000", "--validation_split", "0"]
    proc = subprocess.Popen(
        [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env()
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if '"event": "progress"' in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = parse_stdout("".join(lines))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()[-3000:]
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "SIGTERM" and stopped["model_saved"] is True
    assert 1 <= stopped["step"] < 100000
    metrics = json.loads((tmp_path / "model/metrics.json").read_text())
    assert metrics["status"] == "stopped" and metrics["step"] == stopped["step"]
    assert (tmp_path / "model/model.safetensors").exists()
    assert not any(e["event"] == "done" for e in events)


@pytest.mark.slow
def test_progress_is_reported_every_few_seconds_whatever_logging_steps_says(tmp_path):
    write_jsonl(tmp_path / "train/train.jsonl", TEXT_ROWS)
    args = [sys.executable, str(SCRIPT), "--train_dir", tmp_path / "train", "--model_dir", tmp_path / "model"]
    args += ["--output_dir", tmp_path / "out", *FAST, "--max_steps", "1000000", "--logging_steps", "1000000"]
    args += ["--validation_split", "0"]
    proc = subprocess.Popen(
        [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env()
    )
    try:
        arrivals = []
        for line in proc.stdout:
            if '"event": "progress"' in line:
                arrivals.append((time.monotonic(), json.loads(line)["step"]))
                if len(arrivals) == 3:
                    break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(arrivals) == 3
    (t1, s1), (t2, s2), (t3, s3) = arrivals
    assert 0 < s1 < s2 < s3 < 1000000
    assert t3 - t1 < 10
