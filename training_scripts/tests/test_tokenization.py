"""Tokenisation: which tokens are learnt, and how packing lays them out."""

from __future__ import annotations

from batching import PackedData
from data import parse_sample
from tokenization import Encoder

from training_scripts.tests.helpers import CHAT_ROWS, CHATML, PC_ROWS, chat_tokenizer


def test_encoder_masks_prompt_and_chat_context():
    tok = chat_tokenizer(eos="</s>")
    enc = Encoder(tok, seq2seq=False, max_len=128)
    pc = parse_sample(PC_ROWS[0])
    [(ids, labels)] = enc.encode_causal([pc])
    prompt_len = len(tok(PC_ROWS[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tok.eos_token_id
    assert tok.decode([t for t in labels if t != -100], skip_special_tokens=True) == PC_ROWS[0]["completion"]

    tok.chat_template = CHATML
    enc = Encoder(tok, seq2seq=False, max_len=128)
    [(ids, labels)] = enc.encode_causal([parse_sample(CHAT_ROWS[0])])
    learnt = tok.decode([t for t in labels if t != -100])
    assert learnt.startswith("hello person 0, nice to meet you.<|im_end|>"), learnt
    assert "greet" not in learnt and "terse" not in learnt
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are terse.<|im_end|>")

    packed = PackedData([(ids, labels)] * 3, 16, tok.pad_token_id)
    assert packed.ids.shape[1] == 16 and packed.tokens == 3 * len(ids)
    flat_ids = packed.ids.flatten().tolist()[: packed.tokens]
    flat_targets = packed.targets.flatten().tolist()
    assert flat_ids == ids * 3
    assert flat_targets[: packed.tokens - 1] == (labels * 3)[1:]  # shifted once, across block boundaries
