"""training_scripts/: the training entry point, run as a subprocess exactly as the backends run it.

Tiny models only (built here from configs, or scratch:tiny-gpt2); nothing is downloaded
(HF_HUB_OFFLINE=1 unless a test says otherwise).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training_scripts import progress
from training_scripts.hyperparameters import (
    DEFAULTS,
    HYPERPARAMETERS,
    SCRATCH_MODELS,
    decode_value,
    format_errors,
    to_cli_args,
    to_sagemaker_hyperparameters,
    validate_hyperparameters,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training_scripts" / "finetune.py"

TEXT_ROWS = [
    {"text": f"the quick brown fox jumps over the lazy dog. the dog sleeps {i % 4}."} for i in range(160)
]
PC_ROWS = [
    {"prompt": f"Question: what colour is item {i % 5}?\nAnswer:", "completion": f" item {i % 5} is blue."}
    for i in range(120)
]
CHAT_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"greet person {i % 3}"},
            {"role": "assistant", "content": f"hello person {i % 3}, nice to meet you."},
        ]
    }
    for i in range(120)
]
FAST = [
    "--max_seq_length",
    "64",
    "--batch_size",
    "8",
    "--logging_steps",
    "1",
    "--num_sample_generations",
    "2",
    "--sample_max_new_tokens",
    "12",
]


# ----------------------------------------------------------------------------- helpers


@dataclass
class Run:
    returncode: int
    events: list[dict]
    stdout: str
    stderr: str
    seconds: float

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of(kind)
        assert len(found) == 1, (kind, self.events, self.stderr[-3000:])
        return found[0]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def base_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_") and k != "HF_TOKEN"}
    env["HF_HUB_OFFLINE"] = "1"
    # One intra-op thread: these models are tiny, and on a busy CI box spinning OpenMP
    # threads fight other processes for the cores (steps then take seconds, not ms).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def parse_stdout(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        event = json.loads(line)  # every stdout line must be one JSON object
        assert isinstance(event, dict) and event["event"] in progress.EVENT_TYPES, line
        assert line.startswith('{"event": '), line
        events.append(event)
    return events


def run_finetune(args, env=None, cwd=None, timeout=300) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or base_env(),
        cwd=cwd,
    )
    return Run(proc.returncode, parse_stdout(proc.stdout), proc.stdout, proc.stderr, time.monotonic() - start)


def flag_run(tmp_path: Path, rows, *extra, validation_rows=None) -> tuple[Run, Path, Path]:
    train = write_jsonl(tmp_path / "data" / "train.jsonl", rows).parent
    args = ["--train_dir", train, "--model_dir", tmp_path / "model", "--output_dir", tmp_path / "out"]
    if validation_rows is not None:
        val = write_jsonl(tmp_path / "val" / "validation.jsonl", validation_rows).parent
        args += ["--validation_dir", val]
    return run_finetune([*args, *FAST, *extra], cwd=tmp_path), tmp_path / "model", tmp_path / "out"


def assert_completed(run: Run) -> None:
    assert run.returncode == 0, (run.events[-3:], run.stderr[-4000:])
    kinds = [e["event"] for e in run.events]
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    assert "error" not in kinds
    start = run.one("start")
    for key in progress.EVENT_FIELDS["start"]:
        assert key in start, key
    assert start["total_parameters"] >= start["trainable_parameters"] > 0
    for event in run.of("progress"):
        assert list(event)[: len(progress.EVENT_FIELDS["progress"]) + 1] == [
            "event",
            *progress.EVENT_FIELDS["progress"],
        ]
        assert event["total_steps"] == start["total_steps"]
    assert run.of("progress")[-1]["step"] == start["total_steps"]


def assert_loss_falls(run: Run, factor: float = 0.7) -> None:
    losses = [e["loss"] for e in run.of("progress")]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses), losses
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < first * factor, losses


def assert_outputs(model_dir: Path, out_dir: Path, weights: str = "model.safetensors") -> dict:
    names = {p.name for p in model_dir.iterdir()}
    for name in (weights, "tokenizer.json", "tokenizer_config.json", "metrics.json", "hyperparameters.json"):
        assert name in names, (name, names)
    assert not any(n.endswith(".bin") for n in names), names
    samples = json.loads((out_dir / "samples.json").read_text())
    assert samples and all({"prompt", "generated", "reference"} <= set(s) for s in samples), samples
    assert all(isinstance(s["generated"], str) for s in samples)
    return json.loads((model_dir / "metrics.json").read_text())


def train_tokenizer(texts, *, specials, bos, eos, pad, unk, eos_suffix=False, vocab_size=600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if eos_suffix:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus(rows) -> list[str]:
    out = []
    for r in rows:
        if "messages" in r:
            out += [m["content"] for m in r["messages"]]
        else:
            out += [v for v in r.values() if isinstance(v, str)]
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = train_tokenizer(
        corpus(CHAT_ROWS + PC_ROWS),
        specials=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        bos="<s>",
        eos="<|im_end|>",
        pad="<unk>",
        unk="<unk>",
    )
    tok.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


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


def test_encoder_masks_prompt_and_chat_context():
    sys.path.insert(0, str(ROOT / "training_scripts"))
    import engine

    tok = train_tokenizer(
        corpus(CHAT_ROWS + PC_ROWS),
        specials=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        bos="<s>",
        eos="</s>",
        pad="<unk>",
        unk="<unk>",
    )
    enc = engine.Encoder(tok, seq2seq=False, max_len=128)
    pc = engine.parse_sample(PC_ROWS[0])
    [(ids, labels)] = enc.encode_causal([pc])
    prompt_len = len(tok(PC_ROWS[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tok.eos_token_id
    assert tok.decode([t for t in labels if t != -100], skip_special_tokens=True) == PC_ROWS[0]["completion"]

    tok.chat_template = CHATML
    enc = engine.Encoder(tok, seq2seq=False, max_len=128)
    [(ids, labels)] = enc.encode_causal([engine.parse_sample(CHAT_ROWS[0])])
    learnt = tok.decode([t for t in labels if t != -100])
    assert learnt.startswith("hello person 0, nice to meet you.<|im_end|>"), learnt
    assert "greet" not in learnt and "terse" not in learnt
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are terse.<|im_end|>")

    packed = engine.PackedData([(ids, labels)] * 3, 16, tok.pad_token_id)
    assert packed.ids.shape[1] == 16 and packed.tokens == 3 * len(ids)
    flat_ids = packed.ids.flatten().tolist()[: packed.tokens]
    flat_targets = packed.targets.flatten().tolist()
    assert flat_ids == ids * 3
    assert flat_targets[: packed.tokens - 1] == (labels * 3)[1:]  # shifted once, across block boundaries


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
    [event] = run.events
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
    [event] = run.events
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


# ----------------------------------------------------------------------------- hyperparameters


def test_defaults_are_valid():
    clean, errors = validate_hyperparameters({})
    assert errors == {}
    assert set(clean) == set(HYPERPARAMETERS) == set(DEFAULTS)
    assert clean["base_model"] in SCRATCH_MODELS and clean["learning_rate"] == 1e-3
    assert clean["merge_adapter"] is True and clean["packing"] is True and clean["max_steps"] == 0


def test_sagemaker_encoded_values_are_decoded():
    clean, errors = validate_hyperparameters(
        {
            "base_model": '"gpt2"',
            "method": '"lora"',
            "packing": "true",
            "learning_rate": "5e-05",
            "epochs": "2",
            "max_steps": "null",
            "gradient_checkpointing": "False",
            "lr_scheduler": '"cosine"',
        }
    )
    assert errors == {}
    assert clean["base_model"] == "gpt2" and clean["method"] == "lora" and clean["packing"] is True
    assert clean["learning_rate"] == 5e-05 and clean["epochs"] == 2.0 and clean["max_steps"] == 0
    assert clean["gradient_checkpointing"] is False and clean["lr_scheduler"] == "cosine"
    assert validate_hyperparameters({"base_model": "gpt2"})[0]["base_model"] == "gpt2"
    assert validate_hyperparameters({"base_model": '"\\"gpt2\\""'})[0]["base_model"] == "gpt2"
    assert decode_value("5e-05") == 5e-05 and decode_value("gpt2") == "gpt2"


def test_learning_rate_default_follows_method():
    assert validate_hyperparameters({"base_model": "gpt2", "method": "lora"})[0]["learning_rate"] == 2e-4
    assert validate_hyperparameters({"base_model": "gpt2"})[0]["learning_rate"] == 5e-5
    assert validate_hyperparameters({"base_model": "gpt2", "learning_rate": ""})[0]["learning_rate"] == 5e-5


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"epochs": 0}, "epochs", "greater than 0"),
        ({"batch_size": 2.5}, "batch_size", "an integer between 1 and 1024"),
        ({"batch_size": True}, "batch_size", "an integer"),
        ({"max_seq_length": 8}, "max_seq_length", "between 16 and 131072"),
        ({"lora_dropout": 1.0}, "lora_dropout", "between 0 and 0.9"),
        ({"warmup_ratio": "lots"}, "warmup_ratio", "a number between 0 and 0.9"),
        ({"method": "qlora"}, "method", "one of full, lora"),
        ({"lr_scheduler": "step"}, "lr_scheduler", "constant_with_warmup"),
        ({"packing": "maybe"}, "packing", "true or false"),
        ({"learning_rate": "nan"}, "learning_rate", "a number"),
        ({"base_model": "scratch:huge"}, "base_model", "scratch:tiny-gpt2"),
        ({"base_model": "a\nb"}, "base_model", "control characters"),
        ({"method": "lora", "merge_adapter": False}, "merge_adapter", "must be true for scratch models"),
        ({"foo": 1}, "foo", "unknown hyperparameter 'foo'"),
    ],
)
def test_invalid_values_name_the_field_and_the_range(values, field, fragment):
    _, errors = validate_hyperparameters(values)
    assert field in errors and fragment in errors[field], errors
    assert format_errors(errors).startswith(f"Invalid hyperparameters: {field}: ")


_valid_values = st.fixed_dictionaries(
    {},
    optional={
        "base_model": st.sampled_from(["gpt2", "Qwen/Qwen2.5-0.5B", "scratch:tiny-gpt2", "/models/my model"]),
        "method": st.sampled_from(["full", "lora"]),
        "epochs": st.floats(min_value=0.01, max_value=1000),
        "max_steps": st.integers(0, 10_000_000),
        "learning_rate": st.floats(min_value=1e-9, max_value=1),
        "batch_size": st.integers(1, 1024),
        "packing": st.booleans(),
        "lora_dropout": st.floats(0, 0.9),
        "lr_scheduler": st.sampled_from(["linear", "cosine", "constant"]),
        "seed": st.integers(0, 2**31 - 1),
    },
)


@settings(max_examples=200, deadline=None)
@given(_valid_values)
def test_cli_and_sagemaker_encodings_round_trip(values):
    clean, errors = validate_hyperparameters(values)
    assert errors == {}
    sys.path.insert(0, str(ROOT / "training_scripts"))
    import finetune

    _, raw = finetune.parse_args(["--train_dir", "/data", *to_cli_args(clean)])
    assert validate_hyperparameters(raw) == (clean, {})
    encoded = to_sagemaker_hyperparameters(clean)
    assert all(isinstance(v, str) for v in encoded.values())
    assert validate_hyperparameters(encoded) == (clean, {})


def test_progress_lines_are_ordered_json_and_never_nan():
    line = progress.format_event("progress", loss=float("nan"), step=3, extra="x", total_steps=9)
    assert line == '{"event": "progress", "step": 3, "total_steps": 9, "loss": null, "extra": "x"}'
    assert progress.parse_event(line + "\n")["loss"] is None
    assert progress.parse_event("some library warning") is None
    assert progress.parse_event('{"event": "unknown"}') is None
    assert progress.match_metrics(line) == {}


def test_shared_modules_need_only_the_standard_library():
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'peft', 'tokenizers', 'huggingface_hub', 'numpy'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        "from training_scripts import hyperparameters, progress\n"
        "assert hyperparameters.validate_hyperparameters({})[1] == {}\n"
        "print(progress.format_event('done', step=1))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"event": "done", "step": 1}'
