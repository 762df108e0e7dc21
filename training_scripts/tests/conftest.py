"""The script's modules import each other by their bare names (``import progress``), as they
do when SageMaker runs ``python finetune.py`` inside the folder: the tests put the folder on
sys.path the same way finetune.py does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from training_scripts.tests.helpers import CHATML, SCRIPTS_DIR, chat_tokenizer

if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A saved 2-layer Llama with the chat tokenizer and a ChatML template (EOS <|im_end|>). The
    tests only read the folder (runs write into their own tmp_path), so one serves the session."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = chat_tokenizer(eos="<|im_end|>")
    tok.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
