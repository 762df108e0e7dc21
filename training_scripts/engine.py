"""Training engine behind finetune.py: data, model, a plain torch training loop, saving.

Imports torch / transformers / peft, so only finetune.py imports it (after the arguments
were validated); the Django web process never does.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import math
import os
import random
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import hyperparameters as hp  # noqa: E402
import progress  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    get_scheduler,
)

transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

# The job page polls every 2 s; a progress line at least this often keeps its bar moving.
PROGRESS_MAX_INTERVAL_SECONDS = 2.0
IGNORE = -100
SCRATCH_EOS = "<|endoftext|>"
SCRATCH_PAD = "<|pad|>"
TRAIN_NAMES = ("train.jsonl",)
VALIDATION_NAMES = ("validation.jsonl", "valid.jsonl", "val.jsonl", "eval.jsonl")
HUB_CHECK_TIMEOUT_S = 20.0

# LoRA target modules per architecture (config.model_type); others fall back to peft's
# defaults, then to all linear layers.
_ATTN_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "umt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neo": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "stablelm",
            "starcoder2",
            "smollm3",
            "granite",
            "cohere",
        ),
        _ATTN_QKVO,
    ),
}


class TrainingError(Exception):
    """A failure with a message meant for the user (becomes the ``error`` event's message)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.user_message = message


def log(message: str) -> None:
    print(f"finetune: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Tokenisation into training examples
# --------------------------------------------------------------------------------------


class Encoder:
    """Turns samples into token ids with labels (IGNORE on tokens that are not learnt)."""

    def __init__(self, tokenizer, seq2seq: bool, max_len: int):
        self.tok = tokenizer
        self.seq2seq = seq2seq
        self.max_len = max_len
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.adds_bos = self.bos_id is not None and probe[:1] == [self.bos_id] and plain[:1] != [self.bos_id]
        self.template = bool(getattr(tokenizer, "chat_template", None))
        self._template_failed = False

    # chat rendering ------------------------------------------------------------------
    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _templated_segments(self, messages):
        segments: list[tuple[str, bool]] = []
        prev = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render(messages[:i], True) if i else ""
            after = self._render(messages[: i + 1], False)
            if not before.startswith(prev) or not after.startswith(before):
                return None
            segments += [(before[len(prev) :], False), (after[len(before) :], True)]
            prev = after
        full = self._render(messages, False)
        if not full.startswith(prev):
            return None
        if full[len(prev) :]:
            segments.append((full[len(prev) :], False))
        return segments

    def chat_segments(self, messages) -> tuple[list[tuple[str, bool]], bool]:
        """(segments, templated)."""
        if self.template and not self._template_failed:
            try:
                segments = self._templated_segments(messages)
            except Exception as exc:  # a template that rejects these roles, etc.
                log(f"chat template not usable ({exc}); using a plain 'role: content' rendering")
                segments = None
            if segments is not None:
                return segments, True
            self._template_failed = True
        segments = []
        for m in messages:
            if m["role"] == "assistant":
                segments += [("assistant: ", False), (m["content"] + "\n", True)]
            else:
                segments.append((f"{m['role']}: {m['content']}\n", False))
        return segments, False

    def chat_prompt(self, messages) -> tuple[str, str, bool]:
        """(prompt up to the last assistant turn, that turn's content, templated)."""
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        history, reference = messages[:last], messages[last]["content"]
        if self.template and not self._template_failed:
            with contextlib.suppress(Exception):
                return self._render(history, True), reference, True
        text = "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant: "
        return text, reference, False

    # causal LM -------------------------------------------------------------------------
    def encode_causal(self, samples: list[Sample]) -> list[tuple[list[int], list[int]]]:
        plans = []
        texts: list[str] = []
        for s in samples:
            templated = False
            if s.kind == "text":
                segments = [(s.text, True)]
            elif s.kind == "prompt_completion":
                segments = [(s.prompt, False), (s.completion, True)]
            else:
                segments, templated = self.chat_segments(s.messages)
            plans.append((len(texts), segments, templated))
            texts += [text for text, _ in segments]
        ids_all = self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        examples = []
        for start, segments, templated in plans:
            ids: list[int] = []
            labels: list[int] = []
            if self.adds_bos and not templated:
                ids.append(self.bos_id)
                labels.append(IGNORE)
            for k, (_, trainable) in enumerate(segments):
                seg = ids_all[start + k]
                ids += seg
                labels += seg if trainable else [IGNORE] * len(seg)
            if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                ids.append(self.eos_id)
                labels.append(self.eos_id)
            examples.append((ids, labels))
        return examples

    # seq2seq ---------------------------------------------------------------------------
    def seq2seq_pair(self, s: Sample) -> tuple[str, str]:
        if s.kind == "prompt_completion":
            return s.prompt, s.completion
        if s.kind == "chat":
            prompt, reference, _ = self.chat_prompt(s.messages)
            return prompt, reference
        words = s.text.split()
        half = max(1, len(words) // 2)
        return " ".join(words[:half]), " ".join(words[half:]) or s.text

    def encode_seq2seq(self, samples: list[Sample]) -> list[tuple[list[int], list[int]]]:
        pairs = [self.seq2seq_pair(s) for s in samples]
        if not pairs:
            return []
        inputs = self.tok([p for p, _ in pairs], truncation=True, max_length=self.max_len)["input_ids"]
        targets = self.tok(text_target=[t for _, t in pairs], truncation=True, max_length=self.max_len)[
            "input_ids"
        ]
        return [(i, t) for i, t in zip(inputs, targets, strict=True) if t]

    # generation prompts ----------------------------------------------------------------
    def generation_prompt(self, s: Sample) -> tuple[str, str | None]:
        """(prompt text, reference continuation)."""
        if s.kind == "prompt_completion":
            return s.prompt, s.completion
        if s.kind == "chat":
            prompt, reference, _ = self.chat_prompt(s.messages)
            return prompt, reference
        if self.seq2seq:
            return self.seq2seq_pair(s)
        words = s.text.split(" ")
        cut = max(1, min(24, len(words) // 3))
        return " ".join(words[:cut]), " " + " ".join(words[cut:])

    def prompt_ids(self, prompt: str, templated_chat: bool = False) -> list[int]:
        if self.seq2seq:
            return self.tok(prompt, truncation=True, max_length=self.max_len)["input_ids"]
        ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        if self.adds_bos and not templated_chat:
            ids = [self.bos_id, *ids]
        return ids


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    targets: torch.Tensor  # causal: already shifted (targets[t] = next token); seq2seq: labels
    decoder_input_ids: torch.Tensor | None
    tokens: int  # real (non-padding) tokens processed
    n_targets: int


class PackedData:
    """Causal-LM examples concatenated and cut into max_seq_length blocks (no padding but the last)."""

    def __init__(self, examples, block: int, pad_id: int):
        ids = list(itertools.chain.from_iterable(e[0] for e in examples))
        labels = list(itertools.chain.from_iterable(e[1] for e in examples))
        n = len(ids)
        self.tokens = n
        self.block = block
        nblocks = max(1, math.ceil(n / block))
        total = nblocks * block
        ids_t = torch.full((total,), pad_id, dtype=torch.long)
        ids_t[:n] = torch.tensor(ids, dtype=torch.long)
        # Shift once here: the target at position t is the label of token t+1 of the stream,
        # so even a block's last position learns (from the next block's first token).
        tgt = torch.full((total,), IGNORE, dtype=torch.long)
        if n > 1:
            tgt[: n - 1] = torch.tensor(labels[1:], dtype=torch.long)
        self.ids = ids_t.view(nblocks, block)
        self.targets = tgt.view(nblocks, block)
        self.last_len = n - (nblocks - 1) * block
        self.n_targets_per_block = (self.targets != IGNORE).sum(dim=1).tolist()

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batches(
        self, batch_size: int, generator: torch.Generator | None, pad_multiple: int
    ) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        last = n - 1
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            ids = self.ids[idx]
            targets = self.targets[idx]
            mask = None
            tokens = len(idx) * self.block
            if self.last_len < self.block and bool((idx == last).any()):
                mask = torch.ones_like(ids)
                row = int((idx == last).nonzero()[0])
                mask[row, self.last_len :] = 0
                tokens -= self.block - self.last_len
            n_targets = sum(self.n_targets_per_block[i] for i in idx.tolist())
            yield Batch(ids, mask, targets, None, tokens, n_targets)


class PaddedData:
    """One example per row, batched by similar length, padded to the longest of the batch."""

    def __init__(self, examples, pad_id: int, seq2seq: bool, max_len: int, decoder_start_id: int | None):
        self.pad_id = pad_id
        self.seq2seq = seq2seq
        self.decoder_start_id = decoder_start_id
        self.rows: list[tuple[list[int], list[int]]] = []
        for ids, labels in examples:
            if seq2seq:
                row = (ids[:max_len], labels[:max_len])
            else:
                targets = [*labels[1:], IGNORE]
                row = (ids[:max_len], targets[:max_len])
            if any(t != IGNORE for t in row[1]):
                self.rows.append(row)
        self.tokens = sum(len(i) + (len(t) if seq2seq else 0) for i, t in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(
        self, batch_size: int, generator: torch.Generator | None, pad_multiple: int
    ) -> Iterator[Batch]:
        n = len(self.rows)
        if generator is not None:
            order = torch.randperm(n, generator=generator).tolist()
            mega = batch_size * 50
            groups = []
            for start in range(0, n, mega):
                chunk = sorted(order[start : start + mega], key=lambda i: -len(self.rows[i][0]))
                groups += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
            perm = torch.randperm(len(groups), generator=generator).tolist()
            groups = [groups[i] for i in perm]
        else:
            order = sorted(range(n), key=lambda i: -len(self.rows[i][0]))
            groups = [order[k : k + batch_size] for k in range(0, n, batch_size)]
        for group in groups:
            yield self._collate([self.rows[i] for i in group], pad_multiple)

    def _collate(self, rows, pad_multiple: int) -> Batch:
        def width(lengths):
            w = max(lengths)
            return int(math.ceil(w / pad_multiple) * pad_multiple) if pad_multiple > 1 else w

        w_in = width([len(r[0]) for r in rows])
        ids = torch.full((len(rows), w_in), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), w_in), dtype=torch.long)
        w_t = width([len(r[1]) for r in rows]) if self.seq2seq else w_in
        targets = torch.full((len(rows), w_t), IGNORE, dtype=torch.long)
        tokens = 0
        for k, (i, t) in enumerate(rows):
            ids[k, : len(i)] = torch.tensor(i, dtype=torch.long)
            mask[k, : len(i)] = 1
            targets[k, : len(t)] = torch.tensor(t, dtype=torch.long)
            tokens += len(i) + (len(t) if self.seq2seq else 0)
        decoder_input_ids = None
        if self.seq2seq:
            decoder_input_ids = torch.full_like(targets, self.pad_id)
            decoder_input_ids[:, 0] = self.decoder_start_id
            decoder_input_ids[:, 1:] = targets[:, :-1]
            decoder_input_ids[decoder_input_ids == IGNORE] = self.pad_id
        n_targets = int((targets != IGNORE).sum())
        return Batch(ids, mask, targets, decoder_input_ids, tokens, n_targets)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _hub_offline() -> bool:
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _hub_preflight(repo_id: str, token: str | None) -> str:
    """One quick access check (no retries): "ok", "network" (Hub unreachable), or raise TrainingError."""
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    result: dict[str, BaseException | None] = {}

    def check():
        try:
            auth_check(repo_id, token=token)
            result["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            result["error"] = exc

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(HUB_CHECK_TIMEOUT_S)
    if "error" not in result:
        return "network"
    error = result["error"]
    if error is None:
        return "ok"
    if isinstance(error, GatedRepoError):
        why = "the HF_TOKEN given has no access to it" if token else "no HF_TOKEN is set"
        raise TrainingError(
            f"Model '{repo_id}' is gated on the Hugging Face Hub and {why}: accept its licence at "
            f"https://huggingface.co/{repo_id} with your account, then set HF_TOKEN to a token of that "
            "account."
        )
    if isinstance(error, RepositoryNotFoundError):
        hint = "" if token else " (a private model also needs HF_TOKEN)"
        raise TrainingError(
            f"Model '{repo_id}' was not found on the Hugging Face Hub: check the model id{hint}."
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise TrainingError(
                f"Access to model '{repo_id}' was refused by the Hugging Face Hub (HTTP {status}): "
                "check HF_TOKEN and that your account accepted the model's licence."
            )
    log(f"Hugging Face Hub not reachable ({type(error).__name__}); trying the local cache")
    return "network"


def resolve_base_model(name: str, token: str | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only). Fails fast with a clear message."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path, True
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise TrainingError(f"Model folder '{name}' does not exist (a local base model must be a folder).")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise TrainingError(
            f"'{name}' is neither a valid Hugging Face Hub model id (expected 'name' or 'org/name') "
            "nor a local folder."
        ) from None
    if _hub_offline():
        return name, True
    return name, _hub_preflight(name, token) == "network"


def _unavailable(name: str, local_only: bool, exc: Exception) -> TrainingError:
    if local_only:
        return TrainingError(
            f"Model '{name}' could not be loaded: the Hugging Face Hub cannot be reached (offline mode or no "
            "network) and the model is not in the local cache: check the model id, give the training machine "
            "network access to huggingface.co (set HF_TOKEN and accept the licence for gated models), or use "
            "a local model folder."
        )
    return TrainingError(f"Model '{name}' could not be loaded: {type(exc).__name__}: {exc}")


def build_scratch(name: str, samples: list[Sample], max_len: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    spec = hp.SCRATCH_MODELS[name]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab_size"],
        min_frequency=2,
        special_tokens=[SCRATCH_EOS, SCRATCH_PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(itertools.islice(sample_strings(samples), 200_000), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SCRATCH_EOS,
        eos_token=SCRATCH_EOS,
        unk_token=SCRATCH_EOS,
        pad_token=SCRATCH_PAD,
        model_max_length=max_len,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_len,
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config), tokenizer


def load_pretrained(name: str, method: str, device: torch.device, precision: str):
    token = hf_token()
    source, local_only = resolve_base_model(name, token)
    common = {"token": token, "local_files_only": local_only}
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except ValueError as exc:
        raise TrainingError(
            f"Model '{name}' has an architecture this transformers version does not know ({exc}); "
            "models that need custom code are not run."
        ) from None
    except OSError as exc:
        raise _unavailable(name, local_only, exc) from None
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    dtype = torch.float32
    if method == "lora" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16  # frozen base in half precision
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        placement = {"device_map": {"": device.index or 0}} if device.type == "cuda" else {}
        model = cls.from_pretrained(source, config=config, dtype=dtype, **placement, **common)
    except ValueError as exc:
        raise TrainingError(
            f"Model '{name}' ({config.model_type}) is neither a causal nor a seq2seq language model: {exc}"
        ) from None
    except OSError as exc:
        raise _unavailable(name, local_only, exc) from None
    return model, tokenizer, seq2seq


def lora_target_modules(model, model_type: str):
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = LORA_TARGETS.get(model_type)
    if targets and all(t in names for t in targets):
        return targets
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    if model_type in peft_defaults:
        return None  # peft's own choice for this architecture
    return "all-linear"


def apply_lora(model, hparams: dict, seq2seq: bool):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora_target_modules(model, model.config.model_type)
    config = LoraConfig(
        r=hparams["lora_r"],
        lora_alpha=hparams["lora_alpha"],
        lora_dropout=hparams["lora_dropout"],
        target_modules=targets,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
    )
    model = get_peft_model(model, config)
    used = model.peft_config["default"].target_modules
    return model, sorted(used) if isinstance(used, set | list | tuple) else used


def pick_device() -> tuple[torch.device, str]:
    forced = os.environ.get("FINETUNE_DEVICE")
    if forced:
        device = torch.device(forced)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        return device, "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return device, "fp32"


def max_positions(config) -> int | None:
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def make_optimizer(model, hparams: dict, device: torch.device):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": hparams["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    lr = hparams["learning_rate"]
    if device.type in ("cuda", "cpu") and all(p.dtype == torch.float32 for g in groups for p in g["params"]):
        with contextlib.suppress(Exception):
            return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr)


# --------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------


@dataclass
class Tracker:
    total_steps: int
    steps_per_epoch: int
    started: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0  # seconds spent in eval / checkpoints
    cpu_started: float = field(default_factory=time.process_time)
    cpu_excluded: float = 0.0
    train_tokens: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    log_history: list[dict] = field(default_factory=list)

    def train_time(self) -> float:
        return time.perf_counter() - self.started - self.excluded

    def train_cpu_time(self) -> float:
        return time.process_time() - self.cpu_started - self.cpu_excluded

    @contextlib.contextmanager
    def excluding(self):
        """Time spent inside does not count as training (evaluation, checkpoints)."""
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0
            self.cpu_excluded += time.process_time() - c0


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str, allow_nan=False)
        fh.write("\n")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(loss) if loss < 80 else None


def run(hparams: dict, paths: dict, state) -> int:
    try:
        return _run(hparams, paths, state)
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(
            f"out of GPU memory ({str(exc).splitlines()[0]}): lower batch_size or max_seq_length (raise "
            "gradient_accumulation_steps to keep the effective batch), turn on gradient_checkpointing, use "
            "method lora, or pick an instance with more GPU memory"
        ) from exc


def _run(hparams: dict, paths: dict, state) -> int:
    random.seed(hparams["seed"])
    transformers.set_seed(hparams["seed"])
    device, precision = pick_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model_dir, output_dir = paths["model_dir"], paths["output_dir"]
    state.model_dir = model_dir

    # ---- data
    train_files = find_data_files(paths["train_dir"], "train")
    if not train_files:
        raise TrainingError(f"no training data: put train.jsonl (JSON lines) in {paths['train_dir']}")
    train_samples = read_samples(train_files)
    if not train_samples:
        raise TrainingError(f"the training data in {paths['train_dir']} has no samples")
    eval_samples: list[Sample] = []
    if paths.get("validation_dir"):
        eval_samples = read_samples(find_data_files(paths["validation_dir"], "validation"))
    elif os.path.isdir(paths["train_dir"]):
        extra = [os.path.join(paths["train_dir"], n) for n in VALIDATION_NAMES]
        eval_samples = read_samples([p for p in extra if os.path.isfile(p)][:1])
    if not eval_samples and hparams["validation_split"] > 0 and len(train_samples) >= 20:
        shuffled = train_samples[:]
        random.Random(hparams["seed"]).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * hparams["validation_split"]))
        eval_samples, train_samples = shuffled[:n_eval], shuffled[n_eval:]

    # ---- model
    base = hparams["base_model"]
    max_len = hparams["max_seq_length"]
    if hp.is_scratch_model(base):
        model, tokenizer = build_scratch(base, train_samples + eval_samples, max_len)
        seq2seq = False
    else:
        model, tokenizer, seq2seq = load_pretrained(base, hparams["method"], device, precision)
    limit = None if seq2seq else max_positions(model.config)
    if limit and max_len > limit:
        log(f"max_seq_length {max_len} exceeds what {base} supports; using {limit}")
        max_len = limit
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if hparams["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_targets = None
    if hparams["method"] == "lora":
        model, lora_targets = apply_lora(model, hparams, seq2seq)
    model.to(device)
    with contextlib.suppress(Exception):
        model.config.use_cache = False

    # ---- tokenise
    encoder = Encoder(tokenizer, seq2seq, max_len)
    pad_multiple = 8 if device.type == "cuda" else 1
    decoder_start = getattr(model.config, "decoder_start_token_id", None)
    if decoder_start is None:
        decoder_start = pad_id

    def build(samples):
        if not samples:
            return None
        if seq2seq:
            return PaddedData(encoder.encode_seq2seq(samples), pad_id, True, max_len, decoder_start)
        examples = encoder.encode_causal(samples)
        if hparams["packing"]:
            return PackedData(examples, max_len, pad_id)
        return PaddedData(examples, pad_id, False, max_len, None)

    train_data = build(train_samples)
    eval_data = build(eval_samples)
    if train_data is None or len(train_data) == 0:
        raise TrainingError(
            "no training example has tokens to learn from (check the data and max_seq_length)"
        )
    if eval_data is not None and len(eval_data) == 0:
        eval_data = None

    # ---- schedule
    bs, ga = hparams["batch_size"], hparams["gradient_accumulation_steps"]
    micro_per_epoch = math.ceil(len(train_data) / bs)
    steps_per_epoch = math.ceil(micro_per_epoch / ga)
    total_steps = hparams["max_steps"] or max(1, math.ceil(hparams["epochs"] * steps_per_epoch))
    state.total_steps = total_steps
    logging_steps = hparams["logging_steps"] or max(1, total_steps // 100)
    eval_steps = hparams["eval_steps"] or max(1, math.ceil(total_steps / 5))
    used = dict(hparams, logging_steps=logging_steps, eval_steps=eval_steps, max_seq_length=max_len)
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(output_dir, exist_ok=True)
    _write_json(os.path.join(model_dir, "hyperparameters.json"), used)

    optimizer = make_optimizer(model, hparams, device)
    scheduler = get_scheduler(
        hparams["lr_scheduler"],
        optimizer,
        num_warmup_steps=math.ceil(hparams["warmup_ratio"] * total_steps),
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    trainable = [p for p in model.parameters() if p.requires_grad]
    total_params, trainable_params = count_parameters(model)
    non_blocking = device.type == "cuda"

    def forward_loss(batch: Batch) -> torch.Tensor:
        ids = batch.input_ids.to(device, non_blocking=non_blocking)
        mask = (
            None
            if batch.attention_mask is None
            else batch.attention_mask.to(device, non_blocking=non_blocking)
        )
        targets = batch.targets.to(device, non_blocking=non_blocking)
        with autocast():
            if seq2seq:
                dec = batch.decoder_input_ids.to(device, non_blocking=non_blocking)
                logits = model(
                    input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False
                ).logits
            else:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )

    def evaluate() -> float | None:
        model.eval()
        loss_sum = torch.zeros((), device=device)
        count = 0
        with torch.inference_mode():
            for batch in eval_data.batches(bs, None, pad_multiple):
                if state.stop_requested():  # a stop signal cuts an evaluation short: no figure
                    model.train()
                    return None
                loss_sum += forward_loss(batch)
                count += batch.n_targets
        model.train()
        return _finite(float(loss_sum) / count) if count else None

    tracker = Tracker(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    progress.emit(
        "start",
        total_steps=total_steps,
        epochs=round(total_steps / steps_per_epoch, 4),
        samples=len(train_samples),
        eval_samples=len(eval_samples),
        tokens=train_data.tokens,
        total_parameters=total_params,
        trainable_parameters=trainable_params,
        device=str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        precision=precision,
        method=hparams["method"],
        base_model=base,
        max_seq_length=max_len,
        seq2seq=seq2seq,
        packing=bool(hparams["packing"] and not seq2seq),
        lora_target_modules=lora_targets,
        learning_rate=hparams["learning_rate"],
    )

    def do_eval(step: int) -> float | None:
        with tracker.excluding():
            loss = evaluate()
        if state.stop_requested():
            return None
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "eval_loss": loss}
        tracker.log_history.append({"event": "eval", **record})
        progress.emit(
            "eval",
            step=step,
            total_steps=total_steps,
            epoch=record["epoch"],
            eval_loss=loss,
            perplexity=perplexity(loss),
        )
        return loss

    # ---- train
    state.phase = "train"
    model.train()
    step = 0
    epoch_index = 0
    eval_loss = None
    window_loss = torch.zeros((), device=device)
    window_targets = 0
    window_tokens = 0
    window_start = tracker.train_time()
    clip = hparams["max_grad_norm"] if hparams["max_grad_norm"] > 0 else float("inf")
    grad_norm = torch.zeros(())
    while step < total_steps and not state.stop_requested():
        generator = torch.Generator().manual_seed(hparams["seed"] + epoch_index)
        micro = train_data.batches(bs, generator, pad_multiple)
        while step < total_steps and not state.stop_requested():
            group = list(itertools.islice(micro, ga))
            if not group:
                break
            n_targets = sum(b.n_targets for b in group)
            step_loss = torch.zeros((), device=device)
            for batch in group:
                loss_sum = forward_loss(batch)
                loss = loss_sum / max(n_targets, 1)
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss_sum.detach()
                window_tokens += batch.tokens
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state.step = step
            window_loss += step_loss
            window_targets += n_targets

            # Also report at least every few seconds, so a watcher never sees a frozen bar on slow steps.
            due = tracker.train_time() - window_start >= PROGRESS_MAX_INTERVAL_SECONDS
            if step % logging_steps == 0 or due or step == total_steps or state.stop_requested():
                loss_value = float(window_loss) / window_targets if window_targets else None
                if loss_value is not None and not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the training loss became {loss_value} at step {step}: lower the learning rate "
                        "or check the data"
                    )
                now = tracker.train_time()
                elapsed = max(now - window_start, 1e-9)
                tracker.train_tokens += window_tokens
                if loss_value is not None:
                    tracker.loss_sum += float(window_loss)
                    tracker.loss_count += window_targets
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": loss_value,
                    "learning_rate": lr,
                    "grad_norm": _finite(float(grad_norm)),
                    "tokens_per_second": round(window_tokens / elapsed, 1),
                }
                tracker.log_history.append({"event": "progress", **record})
                progress.emit(
                    "progress",
                    total_steps=total_steps,
                    eta_seconds=round(now / step * (total_steps - step), 1),
                    **record,
                )
                window_loss = torch.zeros((), device=device)
                window_targets = 0
                window_tokens = 0
                window_start = now
            if state.stop_requested():
                break
            if eval_data is not None and step % eval_steps == 0 and step < total_steps:
                eval_loss = do_eval(step)
            if hparams["save_steps"] and step % hparams["save_steps"] == 0 and step < total_steps:
                with tracker.excluding():
                    path = save_checkpoint(model, tokenizer, paths["checkpoint_dir"], step)
                progress.emit("checkpoint", step=step, path=path)
        epoch_index += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_runtime = tracker.train_time()
    train_cpu_time = tracker.train_cpu_time()
    if not state.stop_requested() and eval_data is not None:
        eval_loss = do_eval(step)

    # ---- save
    state.phase = "save"
    model.eval()
    saved = False
    if step > 0:
        if hparams["method"] == "lora" and hparams["merge_adapter"]:
            model = model.merge_and_unload()
        with contextlib.suppress(Exception):
            model.config.use_cache = True
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        saved = True
    state.model_saved = saved
    stopped = state.stop_requested()  # also true for a signal that came during the save

    metrics = {
        "status": "stopped" if stopped else "completed",
        "step": step,
        "total_steps": total_steps,
        "epoch": round(step / steps_per_epoch, 4),
        "train_loss": _finite(tracker.loss_sum / tracker.loss_count) if tracker.loss_count else None,
        "final_loss": next(
            (r["loss"] for r in reversed(tracker.log_history) if r["event"] == "progress"), None
        ),
        "eval_loss": eval_loss,
        "perplexity": perplexity(eval_loss),
        "train_runtime": round(train_runtime, 3),
        "train_cpu_seconds": round(train_cpu_time, 3),  # CPU time of this process (all threads)
        "train_tokens": tracker.train_tokens,
        "tokens_per_second": round(tracker.train_tokens / max(train_runtime, 1e-9), 1),
        "samples": len(train_samples),
        "eval_samples": len(eval_samples),
        "total_parameters": total_params,
        "trainable_parameters": trainable_params,
        "device": str(device),
        "precision": precision,
        "method": hparams["method"],
        "seq2seq": seq2seq,
        "lora_target_modules": lora_targets,
        "adapter_merged": bool(hparams["method"] == "lora" and hparams["merge_adapter"]),
        "log_history": tracker.log_history,
    }
    _write_json(os.path.join(model_dir, "metrics.json"), metrics)
    if stopped:
        progress.emit(
            "stopped",
            step=step,
            total_steps=total_steps,
            reason=_signal_name(state.stop_signal),
            model_saved=saved,
            model_dir=model_dir if saved else None,
        )
        return 128 + int(state.stop_signal)

    # ---- sample generations
    state.phase = "samples"
    samples_path = os.path.join(output_dir, "samples.json")
    generations = generate_samples(
        model, encoder, eval_samples + train_samples, hparams, device, autocast, seq2seq, max_len
    )
    _write_json(samples_path, generations)
    progress.emit(
        "done",
        step=step,
        total_steps=total_steps,
        epoch=metrics["epoch"],
        train_loss=metrics["train_loss"],
        eval_loss=eval_loss,
        perplexity=metrics["perplexity"],
        train_runtime=metrics["train_runtime"],
        train_tokens=metrics["train_tokens"],
        tokens_per_second=metrics["tokens_per_second"],
        model_dir=model_dir,
        output_dir=output_dir,
        final_loss=metrics["final_loss"],
        samples_path=samples_path,
    )
    return 0


def _signal_name(signum: int | None) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return str(signum)


def save_checkpoint(model, tokenizer, checkpoint_dir: str, step: int, keep: int = 2) -> str:
    path = os.path.join(checkpoint_dir, f"checkpoint-{step}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # a LoRA model saves only its adapter
    tokenizer.save_pretrained(tmp)
    _write_json(os.path.join(tmp, "state.json"), {"step": step})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    existing = sorted(
        glob.glob(os.path.join(checkpoint_dir, "checkpoint-*[0-9]")), key=lambda p: int(p.rsplit("-", 1)[-1])
    )
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def generate_samples(model, encoder: Encoder, samples, hparams, device, autocast, seq2seq, max_len):
    count = hparams["num_sample_generations"]
    if count <= 0:
        return []
    tok = encoder.tok
    results = []
    max_new = hparams["sample_max_new_tokens"]
    eos = tok.eos_token_id
    model.eval()
    for s in samples[:count]:
        prompt, reference = encoder.generation_prompt(s)
        templated = s.kind == "chat" and encoder.template and not encoder._template_failed
        ids = encoder.prompt_ids(prompt, templated_chat=templated)
        new = max_new
        if not seq2seq:
            new = max(1, min(max_new, max_len // 2))
            ids = ids[-(max_len - new) :]
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        try:
            with torch.inference_mode(), autocast():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=new,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                )
        except Exception as exc:  # a sample must never fail the run
            log(f"sample generation failed: {type(exc).__name__}: {exc}")
            results.append({"prompt": prompt, "generated": None, "reference": reference, "error": str(exc)})
            continue
        generated = out[0] if seq2seq else out[0, input_ids.shape[1] :]
        results.append(
            {
                "prompt": prompt,
                "generated": tok.decode(generated, skip_special_tokens=True),
                "reference": reference,
            }
        )
    return results
