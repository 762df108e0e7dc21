"""Evaluation beyond loss: the tuned and the base model answer the same held-out prompts, scored.

Up to ``eval_samples`` validation prompts (prompt/completion or chat samples) are answered with
greedy decoding by the tuned model and by the base model: for full fine-tuning and ``scratch:``
models the base answers are taken before training starts (the untrained initialisation for
scratch), for LoRA after training with the adapters disabled. Each answer is scored against the
reference (the completion, or the last assistant turn): ``exact_match`` after trimming
whitespace, token-level F1 (lower-cased words, as SQuAD counts them) and ROUGE-L (the
``rouge-score`` package). Text-only data has no reference answers: its measure stays perplexity,
base against tuned, on the validation data.

The result is ``evaluation.json`` in the model folder (contract C6) and a summary in metrics.json
and the ``done`` event.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from batching import Datasets, eval_batches
from data import Corpus, Sample
from hardware import Hardware
from hyperparameters import ADAPTER_METHODS
from loop import forward_loss
from outputs import prompt_window
from reporting import finite, log, perplexity
from tokenization import Encoder

ANSWER_METRICS = ("exact_match", "token_f1", "rougeL")
TEXT_METRICS = ("perplexity",)


@dataclass
class BaseAnswers:
    """What the base model did, kept from before training when training changes its weights."""

    answers: list[str | None] = field(default_factory=list)
    perplexity: float | None = None
    seconds: float = 0.0


def held_out_prompts(corpus: Corpus, hparams: dict) -> list[Sample]:
    """The validation samples with a reference answer, at most eval_samples of them."""
    count = hparams.get("eval_samples", 0)
    if count <= 0:
        return []
    return [s for s in corpus.eval if s.kind != "text"][:count]


def data_format(corpus: Corpus) -> str:
    """chat, prompt_completion or text: the kind most training samples are."""
    kinds = Counter(s.kind for s in corpus.train)
    return kinds.most_common(1)[0][0] if kinds else "text"


def wanted(corpus: Corpus, hparams: dict) -> bool:
    return hparams.get("eval_samples", 0) > 0 and bool(corpus.eval)


def base_before_training(
    model, encoder: Encoder, corpus: Corpus, datasets: Datasets, hparams: dict, hardware: Hardware, stop
) -> BaseAnswers | None:
    """The base model's answers (or perplexity) now, for a run whose training changes the weights.

    None for LoRA (the base is the same model with its adapters disabled, after training) or
    when there is nothing to evaluate.
    """
    if hparams["method"] in ADAPTER_METHODS or not wanted(corpus, hparams):
        return None
    started = time.monotonic()
    base = BaseAnswers()
    prompts = held_out_prompts(corpus, hparams)
    if prompts:
        base.answers = answer(model, encoder, prompts, hparams, hardware, stop)
    else:
        base.perplexity = perplexity(eval_loss(model, datasets, hparams, hardware, encoder.seq2seq, stop))
    model.train()
    base.seconds = time.monotonic() - started
    return base


def evaluate(
    model,
    base: BaseAnswers | None,
    encoder: Encoder,
    corpus: Corpus,
    datasets: Datasets,
    hparams: dict,
    hardware: Hardware,
    tuned_eval_loss: float | None,
    stop: Callable[[], bool],
) -> dict | None:
    """evaluation.json (C6) for the trained ``model``; None when there is nothing to evaluate."""
    if not wanted(corpus, hparams):
        return None
    started = time.monotonic()
    prompts = held_out_prompts(corpus, hparams)
    lora = hparams["method"] in ADAPTER_METHODS
    if base is None and not lora:
        return None
    if prompts:
        tuned = answer(model, encoder, prompts, hparams, hardware, stop)
        if lora:
            with model.disable_adapter():
                base = BaseAnswers(answers=answer(model, encoder, prompts, hparams, hardware, stop))
        result = scored(prompts, encoder, tuned, base.answers)
    else:
        if lora:
            with model.disable_adapter():
                loss = eval_loss(model, datasets, hparams, hardware, encoder.seq2seq, stop)
            base = BaseAnswers(perplexity=perplexity(loss))
        result = {
            "metrics": list(TEXT_METRICS),
            "tuned": {"perplexity": perplexity(tuned_eval_loss)},
            "base": {"perplexity": base.perplexity},
            "samples": [],
        }
    result["data_format"] = data_format(corpus)
    result["seconds"] = round(time.monotonic() - started + base.seconds, 3)
    return result


def summary(evaluation: dict | None) -> dict | None:
    """What metrics.json and the done event carry: the figures, not the samples."""
    if evaluation is None:
        return None
    return {
        "tuned": evaluation["tuned"],
        "base": evaluation["base"],
        "metrics": evaluation["metrics"],
        "samples": len(evaluation["samples"]),
        "data_format": evaluation["data_format"],
        "seconds": evaluation["seconds"],
    }


# --- answering ------------------------------------------------------------------------------


EVAL_BATCH = 8  # prompts answered together: generate's per-step overhead shared, memory kept small


def answer(model, encoder: Encoder, prompts: list[Sample], hparams: dict, hardware: Hardware, stop):
    """Greedy answers, one per prompt (None where generation failed, or for a stop signal)."""
    model.eval()
    max_new = hparams["sample_max_new_tokens"]
    answers: list[str | None] = []
    for start in range(0, len(prompts), EVAL_BATCH):
        chunk = prompts[start : start + EVAL_BATCH]
        answers += [None] * len(chunk) if stop() else answer_batch(model, encoder, chunk, max_new, hardware)
    return answers


def answer_batch(model, encoder: Encoder, chunk: list[Sample], max_new: int, hardware: Hardware) -> list:
    """Greedy answers to a few prompts in one generate call: padded on the left for a causal
    model (generate derives the positions from the mask, so each answer is the one it gives
    alone), on the right for an encoder. A batch that fails is answered one by one."""
    tok = encoder.tok
    windows = [prompt_window(encoder, s, encoder.generation_prompt(s)[0], max_new) for s in chunk]
    if len(chunk) == 1 or any(not ids for ids, _ in windows):
        return [answer_one(model, encoder, s, max_new, hardware) for s in chunk]
    longest = max(len(ids) for ids, _ in windows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows, masks = [], []
    for ids, _ in windows:
        gap = [pad] * (longest - len(ids))
        rows.append(ids + gap if encoder.seq2seq else gap + ids)
        ones, zeros = [1] * len(ids), [0] * len(gap)
        masks.append(ones + zeros if encoder.seq2seq else zeros + ones)
    input_ids = torch.tensor(rows, dtype=torch.long, device=hardware.device)
    try:
        with torch.no_grad(), hardware.autocast():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.tensor(masks, dtype=torch.long, device=hardware.device),
                max_new_tokens=max(new for _, new in windows),
                do_sample=False,
                use_cache=True,  # training turned the cache off; greedy decoding wants it
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
            )
    except Exception as exc:
        log(f"evaluation: batched generation failed ({type(exc).__name__}: {exc}); answering one by one")
        return [answer_one(model, encoder, s, max_new, hardware) for s in chunk]
    generated = out if encoder.seq2seq else out[:, longest:]
    return [tok.decode(row, skip_special_tokens=True) for row in generated]


def answer_one(model, encoder: Encoder, sample: Sample, max_new: int, hardware: Hardware) -> str | None:
    prompt, _ = encoder.generation_prompt(sample)
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
                use_cache=True,  # training turned the cache off; greedy decoding wants it
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
    except Exception as exc:  # one failed answer scores 0; it never fails the run
        log(f"evaluation: generation failed: {type(exc).__name__}: {exc}")
        return None
    generated = out[0] if encoder.seq2seq else out[0, input_ids.shape[1] :]
    return tok.decode(generated, skip_special_tokens=True)


def eval_loss(model, datasets: Datasets, hparams: dict, hardware: Hardware, seq2seq: bool, stop):
    """Mean loss per target over the validation data (as the training loop measures it)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches(datasets.eval, hparams["batch_size"], hardware.pad_multiple):
            if stop():
                return None
            total += float(forward_loss(model, batch, hardware, seq2seq))
            count += batch.n_targets
    return finite(total / count) if count else None


# --- scoring --------------------------------------------------------------------------------


def scored(prompts: list[Sample], encoder: Encoder, tuned: list, base: list) -> dict:
    samples = []
    for sample, tuned_answer, base_answer in zip(prompts, tuned, base, strict=True):
        prompt, reference = encoder.generation_prompt(sample)
        samples.append(
            {
                "prompt": prompt,
                "reference": reference,
                "tuned": tuned_answer,
                "base": base_answer,
                "scores": {"tuned": scores(tuned_answer, reference), "base": scores(base_answer, reference)},
            }
        )
    return {
        "metrics": list(ANSWER_METRICS),
        "tuned": mean_scores([s["scores"]["tuned"] for s in samples]),
        "base": mean_scores([s["scores"]["base"] for s in samples]),
        "samples": samples,
    }


def scores(prediction: str | None, reference: str) -> dict[str, float]:
    prediction = prediction or ""
    return {
        "exact_match": float(prediction.strip() == reference.strip()),
        "token_f1": round(token_f1(prediction, reference), 4),
        "rougeL": round(rouge_l(prediction, reference), 4),
    }


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {name: round(sum(r[name] for r in rows) / len(rows), 4) for name in ANSWER_METRICS}


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = prediction.lower().split(), reference.lower().split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


_rouge = None


def rouge_l(prediction: str, reference: str) -> float:
    global _rouge
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"])
    return _rouge.score(reference, prediction)["rougeL"].fmeasure
