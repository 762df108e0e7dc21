"""What the tests of training_scripts/ share: sample rows, running finetune.py as the backends
do, tiny tokenizers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from training_scripts import progress

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
SCRIPT = SCRIPTS_DIR / "finetune.py"
ROOT = SCRIPTS_DIR.parent

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
    kinds = [e["event"] for e in run.events if e["event"] != "phase"]
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    assert "error" not in kinds
    # Each phase announced as it starts (tokenising is data preparation again; the base model's
    # answers, when a run evaluates them, come before training), and timed in done.
    phases = [e["phase"] for e in run.of("phase")]
    assert phases[:3] == ["preparing_data", "loading_model", "preparing_data"], phases
    assert phases[3:4] == ["training"] or phases[3:5] == ["evaluating", "training"], phases
    assert phases[-2:] == ["saving", "generating_samples"], phases
    assert set(run.one("done")["phase_seconds"]) == set(phases)
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


def chat_tokenizer(eos: str):
    """A byte-level BPE tokenizer learnt on the chat and prompt/completion rows, with ChatML tokens."""
    return train_tokenizer(
        corpus(CHAT_ROWS + PC_ROWS),
        specials=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        bos="<s>",
        eos=eos,
        pad="<unk>",
        unk="<unk>",
    )
