"""The training format kept with the tokenizer (issue 15 item 1): after a run on chat or
prompt/completion data, the saved tokenizer's ``apply_chat_template`` gives exactly the text and
the token ids training used, and with ``add_generation_prompt`` exactly what the model was
trained to continue."""

from __future__ import annotations

import pytest

from training_scripts.tests.helpers import CHAT_ROWS, PC_ROWS, assert_completed, corpus, flag_run

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "greet person 2"},
    {"role": "assistant", "content": "hello person 2, nice to meet you."},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "hello again."},
]


def training_ids(tokenizer, sample_row: dict) -> list[int]:
    """The ids training builds for one sample, with the tokenizer as it was before the run."""
    from data import parse_sample
    from tokenization import Encoder

    tokenizer.chat_template = None  # as the scratch tokenizer was while training
    return Encoder(tokenizer, seq2seq=False, max_len=512).encode_causal([parse_sample(sample_row)])[0][0]


def saved_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_chat_template_round_trip_after_training_on_chat_data(tmp_path):
    run, model_dir, _ = flag_run(tmp_path, CHAT_ROWS, "--max_steps", "2")
    assert_completed(run)
    tok = saved_tokenizer(model_dir)
    assert tok.chat_template
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    # Training tokenises each turn apart, so its ids can split a word the whole string would
    # merge; the text is the same, and so are the ids of a prompt (below), which is what a
    # serving stack tokenises.
    expected = training_ids(saved_tokenizer(model_dir), {"messages": CONVERSATION})
    assert rendered == tok.decode(expected)
    assert rendered == (
        "system: You are terse.\nuser: greet person 2\nassistant: hello person 2, nice to meet you.\n"
        "user: again\nassistant: hello again.\n<|endoftext|>"
    )
    # The prompt the model was trained to answer: what the samples and the evaluation prompt with.
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "system: You are terse.\nuser: greet person 2\nassistant: "
    import json

    sample = json.loads((model_dir / "samples.json").read_text())[0]
    person = sample["reference"].split(",")[0].removeprefix("hello person ")
    history = [CONVERSATION[0], {"role": "user", "content": f"greet person {person}"}]
    assert sample["prompt"] == tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    from tokenization import Encoder

    prompt_ids = tok.apply_chat_template(
        CONVERSATION[:2], tokenize=True, return_dict=False, add_generation_prompt=True
    )
    plain = saved_tokenizer(model_dir)
    plain.chat_template = None
    assert prompt_ids == Encoder(plain, seq2seq=False, max_len=512).prompt_ids(prompt)


def test_prompt_completion_template_round_trip(tmp_path):
    run, model_dir, _ = flag_run(tmp_path, PC_ROWS, "--max_steps", "2")
    assert_completed(run)
    tok = saved_tokenizer(model_dir)
    row = PC_ROWS[3]
    messages = [
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["completion"]},
    ]
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert ids == training_ids(saved_tokenizer(model_dir), row)
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == row["prompt"]


def test_text_data_leaves_the_tokenizer_template_alone(tmp_path):
    from training_scripts.tests.helpers import TEXT_ROWS

    run, model_dir, _ = flag_run(tmp_path, TEXT_ROWS, "--max_steps", "2")
    assert_completed(run)
    assert not saved_tokenizer(model_dir).chat_template


@pytest.fixture
def bos_tokenizer():
    """A Llama-like tokenizer: it puts BOS in front of what it encodes."""
    from tokenizers import processors

    from training_scripts.tests.helpers import train_tokenizer

    tok = train_tokenizer(
        corpus(CHAT_ROWS + PC_ROWS),
        specials=["<unk>", "<s>", "</s>"],
        bos="<s>",
        eos="</s>",
        pad="<unk>",
        unk="<unk>",
    )
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))]
    )
    return tok


@pytest.mark.parametrize("data_format", ["chat", "prompt_completion"])
def test_a_tokenizer_that_adds_bos_keeps_it_in_the_template(bos_tokenizer, data_format):
    from data import parse_sample
    from tokenization import Encoder, keep_training_format

    row = (
        {"messages": CONVERSATION}
        if data_format == "chat"
        else {"prompt": "Question: what colour?\nAnswer:", "completion": " blue."}
    )
    messages = (
        CONVERSATION
        if data_format == "chat"
        else [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    )
    encoder = Encoder(bos_tokenizer, seq2seq=False, max_len=512)
    assert encoder.adds_bos
    expected = encoder.encode_causal([parse_sample(row)])[0][0]
    keep_training_format(encoder, data_format)
    assert bos_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False) == expected
    assert expected[0] == bos_tokenizer.bos_token_id
    prompt_ids = bos_tokenizer.apply_chat_template(
        messages[:-1], tokenize=True, return_dict=False, add_generation_prompt=True
    )
    prompt, _ = encoder.generation_prompt(parse_sample(row))
    assert prompt_ids == encoder.prompt_ids(prompt)
