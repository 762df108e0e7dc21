"""What a run leaves behind: the model and its figures in model_dir, the sample generations."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from data import Sample
from hardware import Hardware
from reporting import log
from tokenization import Encoder


def write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str, allow_nan=False)
        fh.write("\n")


def write_hyperparameters(model_dir: str, output_dir: str, used: dict) -> None:
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(model_dir, "hyperparameters.json"), used)


ADAPTER_FOLDER = "adapter"  # beside a merged model: the LoRA adapter alone (PEFT format)


def save_model(
    model,
    tokenizer,
    merge_adapter: bool,
    model_dir: str,
    keep_adapter: bool = False,
    weights: dict | None = None,
):
    """Save the trained model (the LoRA adapter merged into it when asked); returns the model saved.

    ``keep_adapter``: also save the adapter alone in ``adapter/`` before merging, so that the
    download can be either (the merge needs the base weights, which only this run has loaded).
    """
    if merge_adapter:
        if keep_adapter:
            adapter_dir = os.path.join(model_dir, ADAPTER_FOLDER)
            model.save_pretrained(adapter_dir)
            tokenizer.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    with contextlib.suppress(Exception):
        model.config.use_cache = True
    model.save_pretrained(model_dir, state_dict=weights)  # weights: an FSDP model's, gathered
    tokenizer.save_pretrained(model_dir)
    return model


def generate_samples(
    model, encoder: Encoder, samples: list[Sample], hparams: dict, hardware: Hardware
) -> list[dict]:
    """Greedy generations for the first num_sample_generations prompts; one that fails is noted, not fatal."""
    count = hparams["num_sample_generations"]
    if count <= 0:
        return []
    model.eval()
    max_new = hparams["sample_max_new_tokens"]
    return [generate_one(model, encoder, sample, max_new, hardware) for sample in samples[:count]]


def generate_one(model, encoder: Encoder, sample: Sample, max_new: int, hardware: Hardware) -> dict:
    prompt, reference = encoder.generation_prompt(sample)
    ids, new = prompt_window(encoder, sample, prompt, max_new)
    input_ids = torch.tensor([ids], dtype=torch.long, device=hardware.device)
    tok = encoder.tok
    try:
        with torch.no_grad(), hardware.autocast():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
    except Exception as exc:  # a sample must never fail the run
        log(f"sample generation failed: {type(exc).__name__}: {exc}")
        return {"prompt": prompt, "generated": None, "reference": reference, "error": str(exc)}
    generated = out[0] if encoder.seq2seq else out[0, input_ids.shape[1] :]
    text = tok.decode(generated, skip_special_tokens=True)
    return {"prompt": prompt, "generated": text, "reference": reference}


def prompt_window(encoder: Encoder, sample: Sample, prompt: str, max_new: int) -> tuple[list[int], int]:
    """(prompt ids, new tokens): a causal model's prompt is cut so that both fit max_seq_length."""
    templated = sample.kind == "chat" and encoder.template and not encoder._template_failed
    ids = encoder.prompt_ids(prompt, templated_chat=templated)
    if encoder.seq2seq:
        return ids, max_new
    new = max(1, min(max_new, encoder.max_len // 2))
    return ids[-(encoder.max_len - new) :], new
