"""Load data: the training and validation samples, read from JSON lines and checked."""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from reporting import TrainingError

TRAIN_NAMES = ("train.jsonl",)
VALIDATION_NAMES = ("validation.jsonl", "valid.jsonl", "val.jsonl", "eval.jsonl")


@dataclass
class Sample:
    kind: str  # text | prompt_completion | chat
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict[str, str]] | None = None


def find_data_files(location: str, split: str) -> list[str]:
    if os.path.isfile(location):
        return [location]
    if not os.path.isdir(location):
        raise TrainingError(f"{split} data folder {location} does not exist")
    names = TRAIN_NAMES if split == "train" else VALIDATION_NAMES
    for name in names:
        path = os.path.join(location, name)
        if os.path.isfile(path):
            return [path]
    files = sorted(glob.glob(os.path.join(location, "*.jsonl")))
    if split == "train":
        files = [f for f in files if os.path.basename(f) not in VALIDATION_NAMES]
    return files


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if len(parts) == len(value):
            return "".join(parts)
    raise ValueError("message content must be a string")


def parse_sample(obj: Any) -> Sample:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError('"messages" must be a non-empty list')
        clean = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise ValueError('each message needs a "role" and a "content"')
            clean.append({"role": m["role"], "content": _content(m["content"])})
        if not any(m["role"] == "assistant" for m in clean):
            raise ValueError("a conversation needs at least one assistant message to learn from")
        return Sample("chat", messages=clean)
    if "prompt" in obj and "completion" in obj:
        if not isinstance(obj["prompt"], str) or not isinstance(obj["completion"], str):
            raise ValueError('"prompt" and "completion" must be strings')
        if not obj["completion"]:
            raise ValueError('"completion" is empty')
        return Sample("prompt_completion", prompt=obj["prompt"], completion=obj["completion"])
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise ValueError('"text" must be a non-empty string')
        return Sample("text", text=obj["text"])
    raise ValueError('expected {"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [...]}')


def read_samples(files: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                where = f"{os.path.basename(path)} line {number}"
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise TrainingError(f"{where}: not valid JSON ({exc.msg})") from None
                try:
                    samples.append(parse_sample(obj))
                except ValueError as exc:
                    raise TrainingError(f"{where}: {exc}") from None
    return samples


def sample_strings(samples: list[Sample]) -> Iterator[str]:
    for s in samples:
        if s.kind == "text":
            yield s.text or ""
        elif s.kind == "prompt_completion":
            yield (s.prompt or "") + (s.completion or "")
        else:
            yield "\n".join(f"{m['role']}: {m['content']}" for m in s.messages or [])


@dataclass
class Corpus:
    train: list[Sample]
    eval: list[Sample]


def load_corpus(paths: dict, hparams: dict) -> Corpus:
    """The training samples, and the validation ones: given, found beside train.jsonl, or held out."""
    train_dir = paths["train_dir"]
    train_files = find_data_files(train_dir, "train")
    if not train_files:
        raise TrainingError(f"no training data: put train.jsonl (JSON lines) in {train_dir}")
    train_samples = read_samples(train_files)
    if not train_samples:
        raise TrainingError(f"the training data in {train_dir} has no samples")
    eval_samples: list[Sample] = []
    if paths.get("validation_dir"):
        eval_samples = read_samples(find_data_files(paths["validation_dir"], "validation"))
    elif os.path.isdir(train_dir):
        beside = [os.path.join(train_dir, n) for n in VALIDATION_NAMES]
        eval_samples = read_samples([p for p in beside if os.path.isfile(p)][:1])
    if not eval_samples and hparams["validation_split"] > 0 and len(train_samples) >= 20:
        shuffled = train_samples[:]
        random.Random(hparams["seed"]).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * hparams["validation_split"]))
        eval_samples, train_samples = shuffled[:n_eval], shuffled[n_eval:]
    return Corpus(train=train_samples, eval=eval_samples)
