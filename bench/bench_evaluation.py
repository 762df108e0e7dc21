"""The end-of-training evaluation's added time, and the download's size and time.

    .venv/bin/python bench/bench_evaluation.py                 # 50 samples, 64 new tokens
    .venv/bin/python bench/bench_evaluation.py --samples 50 --new-tokens 64 --models scratch gpt2-small

For each model: the evaluation as finetune.py runs it (training_scripts/evaluation.py): greedy
answers to `--samples` held-out prompt/completion prompts by the base model and by the tuned one
(2 x samples generations; both are the same weights here, which costs the same), then the
scoring. `scratch` is scratch:tiny-gpt2 (2 layers, n_embd 128, tokenizer learnt on the data);
`gpt2-small` is a randomly initialised GPT-2 of GPT-2 small's size (12 layers, n_embd 768,
124 M parameters, vocabulary 50257) with the same learnt tokenizer's ids mapped in. A random
model never says EOS, so every answer runs to `--new-tokens`: the worst case.

Then the download: the model saved as finetune.py saves it, zipped by jobs/artifacts.py's
streaming zip (as the download view sends it, README.md model card included), bytes and seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training_scripts"))
sys.path.insert(0, str(ROOT))


def samples(count: int):
    from data import Sample

    colours = ["red", "green", "blue", "black", "white", "yellow", "purple"]
    return [
        Sample(
            "prompt_completion",
            prompt=f"Question: what colour is item {i}?\nAnswer:",
            completion=f" {colours[i % 7]}",
        )
        for i in range(count * 4)
    ]


def build(name: str, data):
    from modelling import build_scratch
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tokenizer = build_scratch("scratch:tiny-gpt2", data, 512)
    if name == "gpt2-small":
        config = GPT2Config(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = GPT2LMHeadModel(config)
    return model.eval(), tokenizer


def time_evaluation(name: str, count: int, new_tokens: int, device: str) -> tuple[float, object, object]:
    import evaluation
    import torch
    from hardware import pick_hardware
    from tokenization import Encoder

    data = samples(count)
    model, tokenizer = build(name, data)
    hardware = pick_hardware()
    model.to(hardware.device)
    encoder = Encoder(tokenizer, False, 512)
    hparams = {"sample_max_new_tokens": new_tokens, "eval_samples": count, "method": "full"}
    prompts = data[:count]
    started, cpu_started = time.perf_counter(), time.process_time()
    base = evaluation.answer(model, encoder, prompts, hparams, hardware, lambda: False)
    tuned = evaluation.answer(model, encoder, prompts, hparams, hardware, lambda: False)
    evaluation.scored(prompts, encoder, tuned, base)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{name}: {params / 1e6:.1f} M parameters on {hardware.device}, {torch.get_num_threads()} threads: "
        f"evaluation of {count} samples (base + tuned, {new_tokens} new tokens max) took {seconds:.1f} s "
        f"({cpu_seconds:.1f} CPU-seconds of this process: on a busy machine, the steadier figure)"
    )
    return seconds, model, tokenizer


def time_download(name: str, model, tokenizer) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmtuner.settings")
    django.setup()
    import contextlib
    import functools

    from jobs import artifacts
    from jobs.models import BaseModel, TrainingJob

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        files = [
            artifacts.ModelFile(p.name, p.stat().st_size, functools.partial(open, p, "rb"))
            for p in sorted(Path(folder).iterdir())
        ]
        job = TrainingJob(name="bench", method="full", hyperparameters={}, metrics={})
        job.base_model = BaseModel(hub_id="scratch:tiny-gpt2", name="scratch", licence="MIT")
        stored = sum(f.size for f in files)
        started = time.perf_counter()
        size = 0
        with contextlib.ExitStack():
            for chunk in artifacts._zip(
                artifacts._with_model_card(job, iter(files), "bench", "model"), "bench"
            ):
                size += len(chunk)
        seconds = time.perf_counter() - started
        print(
            f"{name}: download zip {size / 1e6:.1f} MB (model folder {stored / 1e6:.1f} MB) made in "
            f"{seconds:.2f} s ({size / 1e6 / max(seconds, 1e-9):.0f} MB/s, from local disk)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["scratch", "gpt2-small"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for name in args.models:
        _, model, tokenizer = time_evaluation(name, args.samples, args.new_tokens, args.device)
        time_download(name, model, tokenizer)


if __name__ == "__main__":
    main()
