"""Loading models and generating for the playground: the one module here that imports torch.

Imported only inside the Celery task (`jobs.playground.runs.run_generation`), never by the web
process. Models come from local folders (the tuned one, fetched by `jobs.playground.cache`), the
Hugging Face Hub (the base, with HF_TOKEN for gated models), or are built from the tuned
model's config with random weights (the untrained baseline of `scratch:` jobs).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)

from llmtuner.text import storable  # noqa: E402

SEQ2SEQ_INPUT_LIMIT = 1024  # when the tokenizer states no limit of its own


class GenerationError(Exception):
    """A model could not be loaded or could not answer; the message is shown to the person."""


@dataclass(frozen=True)
class Rival:
    """Another job's tuned model, answering in the base's place (two jobs of one dataset compared)."""

    key: str
    folder: Callable[[], Path]
    base: str
    label: str


@dataclass(frozen=True)
class Request:
    prompt: str
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    seed: int
    chat: bool = False
    untrained_seed: int = 0


@dataclass
class Outcome:
    """What is known so far; kept on the run even when a later step fails."""

    tuned_output: str = ""
    base_output: str = ""
    base_label: str = ""
    notes: list[str] = field(default_factory=list)
    load_seconds: float | None = None
    tuned_seconds: float | None = None
    base_seconds: float | None = None
    tuned_tokens: int | None = None
    base_tokens: int | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def fields(self) -> dict[str, Any]:
        # A byte-level tokenizer can decode a NUL, which the database cannot keep.
        values = {
            "tuned_output": storable(self.tuned_output),
            "base_output": storable(self.base_output),
            "notes": "\n".join(self.notes),
            "load_seconds": _round(self.load_seconds),
            "tuned_seconds": _round(self.tuned_seconds),
            "base_seconds": _round(self.base_seconds),
            "tuned_tokens": self.tuned_tokens,
            "base_tokens": self.base_tokens,
        }
        if self.base_label:
            values["base_label"] = self.base_label
        return values

    def add_load_time(self, seconds: float) -> None:
        self.load_seconds = (self.load_seconds or 0.0) + seconds


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    seq2seq: bool
    device: torch.device
    is_adapter: bool = False


def compare(
    *,
    tuned_key: str,
    tuned_folder: Callable[[], Path],
    base: str,
    base_key: str,
    request: Request,
    outcome: Outcome,
    cache,
    rival: Rival | None = None,
) -> Outcome:
    """Answer `request` with the tuned model, then with the base (or the untrained baseline), or
    with another job's tuned model when `rival` is given.

    `cache` is a `jobs.playground.cache.ModelCache`; `tuned_folder` fetches the tuned model's
    files only when a load needs them.
    """
    cache.on_evict = release_memory
    folder: list[Path] = []

    def get_folder() -> Path:
        if not folder:
            folder.append(tuned_folder())
        return folder[0]

    started = time.perf_counter()
    tuned, _ = cache.get_or_load(tuned_key, lambda: load_tuned(get_folder(), base))
    outcome.add_load_time(time.perf_counter() - started)
    outcome.tuned_output, outcome.tuned_tokens, outcome.tuned_seconds = generate(tuned, request, outcome)

    if rival is not None:
        del tuned
        started = time.perf_counter()
        other, _ = cache.get_or_load(rival.key, lambda: load_tuned(rival.folder(), rival.base))
        outcome.add_load_time(time.perf_counter() - started)
        outcome.base_label = rival.label
        outcome.base_output, outcome.base_tokens, outcome.base_seconds = generate(other, request, outcome)
        return outcome

    if tuned.is_adapter:
        # A LoRA adapter saved apart: the base answer is the same model with the adapter off.
        outcome.base_label = f"Base model ({base}, the adapter switched off)"
        with tuned.model.disable_adapter():
            outcome.base_output, outcome.base_tokens, outcome.base_seconds = generate(tuned, request, outcome)
        return outcome
    del tuned  # the cache may unload it to make room for the base

    started = time.perf_counter()
    if base.startswith("scratch:"):
        baseline, _ = cache.get_or_load(
            base_key, lambda: untrained_baseline(get_folder(), request.untrained_seed)
        )
    else:
        baseline, _ = cache.get_or_load(base_key, lambda: load_base(base))
    outcome.add_load_time(time.perf_counter() - started)
    outcome.base_output, outcome.base_tokens, outcome.base_seconds = generate(baseline, request, outcome)
    return outcome


# --- Loading --------------------------------------------------------------------------


def pick_device() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def _model_class(config):
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def load_tuned(folder: Path, base: str) -> Loaded:
    device, dtype = pick_device()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if (folder / "adapter_config.json").exists():
            if base.startswith("scratch:"):
                raise GenerationError(
                    "The tuned model is a LoRA adapter, but its base was built from scratch."
                )
            from peft import PeftModel

            underlying = load_base(base)
            model = PeftModel.from_pretrained(underlying.model, str(folder))
            return Loaded(model.eval(), tokenizer, underlying.seq2seq, device, is_adapter=True)
        config = AutoConfig.from_pretrained(folder)
        model = _model_class(config).from_pretrained(folder, config=config, dtype=dtype)
    except GenerationError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise GenerationError(f"Could not load the tuned model: {type(error).__name__}: {error}") from None
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    return Loaded(model.to(device).eval(), tokenizer, seq2seq, device)


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def load_base(hub_id: str) -> Loaded:
    """The pretrained base: a Hub id (HF_TOKEN for gated ones) or a local folder."""
    device, dtype = pick_device()
    token = hf_token()
    try:
        config = AutoConfig.from_pretrained(hub_id, token=token)
        tokenizer = AutoTokenizer.from_pretrained(hub_id, token=token)
        model = _model_class(config).from_pretrained(hub_id, config=config, dtype=dtype, token=token)
    except (OSError, ValueError, KeyError) as error:
        hint = (
            ""
            if token
            else " If the model is gated or private, set HF_TOKEN on the workers to a token of an account "
            "that accepted its licence."
        )
        raise GenerationError(
            f"Could not load the base model '{hub_id}': {type(error).__name__}: {error}.{hint}"
        ) from None
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    return Loaded(model.to(device).eval(), tokenizer, seq2seq, device)


def untrained_baseline(folder: Path, seed: int) -> Loaded:
    """Random weights in the tuned model's architecture, with its tokenizer; the same for a seed."""
    device, dtype = pick_device()
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise GenerationError(
            f"Could not read the tuned model's config: {type(error).__name__}: {error}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(config).from_config(config)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    return Loaded(model.to(device=device, dtype=dtype).eval(), tokenizer, seq2seq, device)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- Generating -----------------------------------------------------------------------


def render_prompt(tokenizer, request: Request) -> tuple[str, bool]:
    """(the text the model sees, whether the chat template made it)."""
    if not request.chat:
        return request.prompt, False
    if getattr(tokenizer, "chat_template", None):
        try:
            messages = [{"role": "user", "content": request.prompt}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text, True
        except Exception:  # noqa: BLE001, S110 - a template that rejects a lone user turn
            pass
    # What finetune.py trains on when a tokenizer has no chat template.
    return f"user: {request.prompt}\nassistant: ", False


def max_positions(config) -> int | None:
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def generate(loaded: Loaded, request: Request, outcome: Outcome) -> tuple[str, int, float]:
    """(the answer without the prompt, its token count, seconds)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    text, templated = render_prompt(tokenizer, request)
    new_tokens = request.max_new_tokens
    if loaded.seq2seq:
        limit = tokenizer.model_max_length
        limit = limit if isinstance(limit, int) and 0 < limit < 100_000 else SEQ2SEQ_INPUT_LIMIT
        ids = tokenizer(text)["input_ids"]
        if len(ids) > limit:
            ids = tokenizer(text, truncation=True, max_length=limit)["input_ids"]
            outcome.note(f"The prompt was cut to its first {limit} tokens, the most this model reads.")
    else:
        ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        window = max_positions(model.config)
        if window:
            # The prompt keeps up to half the window; the answer gets the rest, up to what was asked.
            allowed = window - min(len(ids), window // 2)
            if new_tokens > allowed:
                new_tokens = allowed
                outcome.note(
                    f"This model reads at most {window} tokens at a time, so answers were capped at "
                    f"{allowed} new tokens."
                )
            keep = window - new_tokens
            if len(ids) > keep:
                ids = ids[-keep:]
                outcome.note(f"The prompt was cut to its last {keep} tokens to fit the model's window.")
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options: dict[str, Any] = {"max_new_tokens": new_tokens, "pad_token_id": pad}
    if request.temperature > 0:
        options.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
    else:
        options.update(do_sample=False)
    devices = [loaded.device.index or 0] if loaded.device.type == "cuda" else []
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(request.seed)
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
    except (RuntimeError, ValueError, IndexError) as error:
        raise GenerationError(f"Generation failed: {type(error).__name__}: {error}") from None
    seconds = time.perf_counter() - started
    generated = output[0] if loaded.seq2seq else output[0, input_ids.shape[1] :]
    special = set(tokenizer.all_special_ids)
    count = sum(1 for token in generated.tolist() if token not in special)
    return tokenizer.decode(generated, skip_special_tokens=True), count, seconds


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
