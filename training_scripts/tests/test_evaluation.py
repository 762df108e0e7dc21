"""Evaluation beyond loss (issue 15 item 4): the tuned and the base model answer held-out
prompts, scored; evaluation.json in the model folder (C6), its summary in metrics.json and the
done event. finetune.py runs in a subprocess as the backends run it, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_scripts.tests.helpers import CHAT_ROWS, TEXT_ROWS, assert_completed, flag_run

# A dataset the scratch model learns in a few dozen steps: the answer is a fixed word per colour.
COLOURS = ["red", "green", "blue", "black", "white"]
LEARNABLE = [{"prompt": f"colour {c}:", "completion": f" {c} {c} {c}"} for _ in range(30) for c in COLOURS]
HELD_OUT = [{"prompt": f"colour {c}:", "completion": f" {c} {c} {c}"} for c in COLOURS * 2]


def evaluation_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "evaluation.json").read_text())


def test_scratch_model_learns_and_its_exact_match_beats_the_base(tmp_path):
    run, model_dir, _ = flag_run(
        tmp_path,
        LEARNABLE,
        *("--max_steps", "60", "--learning_rate", "3e-3", "--eval_samples", "8"),
        *("--sample_max_new_tokens", "8", "--packing", "false"),
        validation_rows=HELD_OUT,
    )
    assert_completed(run)
    evaluation = evaluation_of(model_dir)
    assert evaluation["metrics"] == ["exact_match", "token_f1", "rougeL"]
    assert evaluation["data_format"] == "prompt_completion"
    assert len(evaluation["samples"]) == 8  # eval_samples caps the 10 held-out prompts
    first = evaluation["samples"][0]
    assert first["prompt"] == "colour red:" and first["reference"] == " red red red"
    assert set(first["scores"]) == {"tuned", "base"}
    assert evaluation["tuned"]["exact_match"] >= 0.75, evaluation["samples"]
    assert evaluation["tuned"]["exact_match"] > evaluation["base"]["exact_match"]
    assert evaluation["tuned"]["token_f1"] > evaluation["base"]["token_f1"]
    assert evaluation["tuned"]["rougeL"] > evaluation["base"]["rougeL"]
    # The untrained initialisation answered: its answers are not the tuned ones.
    assert [s["base"] for s in evaluation["samples"]] != [s["tuned"] for s in evaluation["samples"]]

    done = run.one("done")
    assert done["evaluation"]["samples"] == 8
    assert done["evaluation"]["tuned"] == evaluation["tuned"]
    assert done["evaluation"]["base"] == evaluation["base"]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["evaluation"] == done["evaluation"]
    assert json.loads((model_dir / "samples.json").read_text())  # in the model folder, so in the zip


def test_text_data_keeps_perplexity_base_against_tuned(tmp_path):
    run, model_dir, _ = flag_run(tmp_path, TEXT_ROWS, *("--max_steps", "30", "--learning_rate", "3e-3"))
    assert_completed(run)
    evaluation = evaluation_of(model_dir)
    assert evaluation["metrics"] == ["perplexity"] and evaluation["samples"] == []
    assert evaluation["tuned"]["perplexity"] < evaluation["base"]["perplexity"] / 2
    assert run.one("done")["evaluation"]["tuned"] == evaluation["tuned"]


def test_eval_samples_zero_turns_it_off(tmp_path):
    run, model_dir, _ = flag_run(
        tmp_path, LEARNABLE, *("--max_steps", "3", "--eval_samples", "0"), validation_rows=HELD_OUT
    )
    assert_completed(run)
    assert not (model_dir / "evaluation.json").exists()
    assert run.one("done")["evaluation"] is None


def test_lora_base_is_the_model_with_its_adapters_disabled(tmp_path, tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, model_dir, _ = flag_run(
        tmp_path,
        CHAT_ROWS,
        *("--base_model", tiny_llama, "--method", "lora", "--lora_r", "8", "--learning_rate", "2e-2"),
        *("--max_steps", "10", "--eval_samples", "3"),
        validation_rows=CHAT_ROWS[:5],
    )
    assert_completed(run)
    evaluation = evaluation_of(model_dir)
    assert evaluation["data_format"] == "chat" and len(evaluation["samples"]) == 3
    # The base answers are what the untouched base model says to the same prompt.
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    first = evaluation["samples"][0]
    ids = tok(first["prompt"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = base.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert first["base"] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # Both exports are there: the merged model, and the adapter alone in adapter/.
    assert (model_dir / "model.safetensors").exists()
    assert (model_dir / "adapter" / "adapter_config.json").exists()
    assert (model_dir / "adapter" / "adapter_model.safetensors").exists()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["adapter_merged"] is True and metrics["adapter_saved"] is True


def test_scores():
    from evaluation import rouge_l, scores, token_f1

    assert scores("  blue \n", "blue")["exact_match"] == 1.0
    assert scores("Blue", "blue")["exact_match"] == 0.0
    assert token_f1("the blue car", "a blue car") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert scores(None, "blue") == {"exact_match": 0.0, "token_f1": 0.0, "rougeL": 0.0}


def test_answers_in_a_batch_are_the_answers_given_alone():
    """Prompts of different lengths, padded together, answer as each does alone."""
    import transformers
    from data import Sample
    from evaluation import answer_batch, answer_one
    from hardware import pick_hardware
    from modelling import build_scratch
    from tokenization import Encoder

    transformers.set_seed(0)
    rows = [
        Sample("prompt_completion", prompt=r["prompt"] * (1 + i % 3), completion=r["completion"])
        for i, r in enumerate(LEARNABLE[:6])
    ]
    model, tokenizer = build_scratch("scratch:tiny-gpt2", rows, 64)
    model.eval()
    encoder, hardware = Encoder(tokenizer, False, 64), pick_hardware()
    together = answer_batch(model, encoder, rows, 10, hardware)
    alone = [answer_one(model, encoder, s, 10, hardware) for s in rows]
    assert together == alone
    assert len({len(encoder.prompt_ids(s.prompt)) for s in rows}) > 1  # padding was needed
