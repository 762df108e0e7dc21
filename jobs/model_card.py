"""The model card: the README.md of a tuned model's download, that says what it is and how to use it.

Built at download time from the job (base model and licence, dataset, method, hyperparameters,
final metrics) and from two files the training script left in the model folder:
`evaluation.json` (the evaluation, and which data format the model was trained on) and
`samples.json` (a real prompt, exactly as training formatted it).
"""

from __future__ import annotations

import json
import re

from jobs.models import Architecture, Method, TrainingJob

METRIC_LABELS = {
    "exact_match": "Exact match",
    "token_f1": "Token F1",
    "rougeL": "ROUGE-L",
    "perplexity": "Perplexity (lower is better)",
}
FORMATS = {
    "chat": (
        "Chat. The tokenizer carries the chat template used in training, so "
        "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` gives exactly the prompt "
        "the model learnt to answer."
    ),
    "prompt_completion": (
        "Prompt and completion: the model learnt to continue the prompt text directly with the "
        "completion. The tokenizer's chat template does the same for a user turn holding the prompt."
    ),
    "text": "Plain text: the model continues the text it is given.",
}


def metric_rows(evaluation: dict | None) -> list[tuple[str, float | None, float | None]]:
    """(label, base, tuned) per metric of an evaluation (evaluation.json or its summary)."""
    if not evaluation:
        return []
    base, tuned = evaluation.get("base") or {}, evaluation.get("tuned") or {}
    return [(METRIC_LABELS.get(m, m), base.get(m), tuned.get(m)) for m in evaluation.get("metrics") or []]


def render(job: TrainingJob, folder: str, variant: str, evaluation: dict | None, samples: list | None) -> str:
    """README.md for the download of `job` in `folder` (`variant`: model or adapter)."""
    metrics = job.metrics or {}
    data_format = (evaluation or metrics.get("evaluation") or {}).get("data_format")
    adapter = variant == "adapter"
    parts = [
        _front_matter(job, adapter),
        f"# {job.name}\n",
        _origin(job),
        "## Training\n",
        _training(job, adapter),
        "### Hyperparameters\n",
        _table(
            ["Name", "Value"], [(name, _value(value)) for name, value in sorted(job.hyperparameters.items())]
        ),
        "## Results\n",
        _results(metrics),
    ]
    if evaluation:
        parts += ["### Evaluation\n", _evaluation(evaluation)]
    parts += ["## Prompt format\n", _prompt_format(data_format, evaluation, samples)]
    parts += ["## Use it\n", _usage(job, folder, adapter, data_format)]
    return "\n".join(parts)


def _front_matter(job: TrainingJob, adapter: bool) -> str:
    base = job.base_model
    lines = ["---"]
    if not base.hub_id.startswith("scratch:"):
        lines.append(f"base_model: {json.dumps(base.hub_id)}")
    lines.append(f"license: {json.dumps(base.licence or 'other')}")
    lines.append(f"library_name: {'peft' if adapter else 'transformers'}")
    lines.append(f"tags: [llm-tuner, {job.method}]")
    lines.append("---\n")
    return "\n".join(lines)


def _origin(job: TrainingJob) -> str:
    base = job.base_model
    if base.hub_id.startswith("scratch:"):
        return (
            f"Trained with LLM Tuner from nothing: `{base.hub_id}`, a small GPT-2 with a tokenizer learnt on "
            f"the training data (no licence of a base model applies).\n"
        )
    licence = base.licence or "see the base model"
    return f"Fine-tuned with LLM Tuner from `{base.hub_id}` ({base.name}), licence: {licence}.\n"


def _training(job: TrainingJob, adapter: bool) -> str:
    dataset = job.dataset
    if dataset is None:
        where = "- Dataset: (deleted since)"
    else:
        size = f"{dataset.samples:,} samples, {dataset.size_bytes:,} bytes uploaded"
        where = f"- Dataset: {_inline(dataset.name)} ({size})"
    method = Method(job.method).label if job.method in Method.values else job.method
    lines = [where, f"- Method: {method}"]
    if job.method == Method.LORA:
        lines.append(
            "- This download: the LoRA adapter alone (PEFT format); it loads on top of the base model."
            if adapter
            else "- This download: the model with the LoRA adapter merged into its weights."
        )
    metrics = job.metrics or {}
    if metrics.get("step"):
        lines.append(f"- Steps: {metrics['step']:,} (epoch {_value(metrics.get('epoch'))})")
    if metrics.get("train_runtime") is not None:
        lines.append(f"- Training time: {_value(metrics['train_runtime'])} s")
    return "\n".join(lines) + "\n"


def _results(metrics: dict) -> str:
    rows = [
        (label, _value(metrics.get(key)))
        for key, label in (
            ("train_loss", "Training loss"),
            ("final_loss", "Final training loss"),
            ("eval_loss", "Validation loss"),
            ("perplexity", "Validation perplexity"),
        )
        if metrics.get(key) is not None
    ]
    return _table(["Metric", "Value"], rows) if rows else "No final metrics were reported.\n"


def _evaluation(evaluation: dict) -> str:
    count = (
        len(evaluation["samples"])
        if isinstance(evaluation.get("samples"), list)
        else evaluation.get("samples")
    )
    if evaluation.get("metrics") == ["perplexity"]:
        intro = "Perplexity on the validation data, of the base model and of the tuned one."
    else:
        intro = (
            f"{count} held-out validation prompts, answered with greedy decoding by the base model and by "
            "the tuned one, each answer scored against the reference (exact match after trimming whitespace, "
            "token-level F1, ROUGE-L)."
        )
    rows = [(label, _value(b), _value(t)) for label, b, t in metric_rows(evaluation)]
    return intro + "\n\n" + _table(["Metric", "Base", "Tuned"], rows)


def _prompt_format(data_format: str | None, evaluation: dict | None, samples: list | None) -> str:
    text = FORMATS.get(data_format or "", "See the example below.") + "\n"
    example = _example(evaluation, samples)
    if example:
        prompt, reference = example
        text += "\nOne real prompt from the data, exactly as training formatted it:\n\n" + _fence(
            prompt, "text"
        )
        if reference:
            text += "\nIts reference answer:\n\n" + _fence(reference, "text")
    return text


def _example(evaluation: dict | None, samples: list | None) -> tuple[str, str] | None:
    for rows in ((evaluation or {}).get("samples"), samples):
        if isinstance(rows, list):
            for row in rows:
                if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                    reference = row.get("reference")
                    return row["prompt"], reference if isinstance(reference, str) else ""
    return None


def _usage(job: TrainingJob, folder: str, adapter: bool, data_format: str | None) -> str:
    seq2seq = job.base_model.architecture == Architecture.SEQ2SEQ
    kind = "Seq2SeqLM" if seq2seq else "CausalLM"
    path = json.dumps(f"./{folder}")
    if adapter:
        load = (
            f"from peft import AutoPeftModelFor{kind}\nfrom transformers import AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({path})\n"
            f"model = AutoPeftModelFor{kind}.from_pretrained({path})  # the base model, then the adapter\n"
        )
    else:
        load = (
            f"from transformers import AutoModelFor{kind}, AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({path})\n"
            f"model = AutoModelFor{kind}.from_pretrained({path})\n"
        )
    if data_format == "chat" and not seq2seq:
        ask = (
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(\n"
            '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n)\n'
        )
    else:
        ask = 'inputs = tokenizer("Your prompt", return_tensors="pt")\n'
    answer = "output[0]" if seq2seq else 'output[0, inputs["input_ids"].shape[1]:]'
    generate = (
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n"
        f"print(tokenizer.decode({answer}, skip_special_tokens=True))\n"
    )
    return _fence(load + ask + generate, "python")


def _table(headers: list[str], rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    return text.replace("\n", " ")


def _value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | bool | str):
        return str(value)
    return json.dumps(value)


def _fence(text: str, language: str) -> str:
    """A code block that `text` cannot close early (its fence is longer than any backtick run in it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    end = "" if text.endswith("\n") else "\n"
    return f"{fence}{language}\n{text}{end}{fence}\n"
