"""Tokenise: samples into token ids with labels, and prompts for the sample generations."""

from __future__ import annotations

import contextlib

from data import Sample
from reporting import log

IGNORE = -100  # the label of a token that is not learnt (cross_entropy's ignore_index)


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


# the format kept with the tokenizer ----------------------------------------------------


def training_chat_template(encoder: Encoder, data_format: str) -> str | None:
    """A chat template that renders messages exactly as training formatted this data, or None
    to keep the tokenizer's own (text data; seq2seq; chat data trained with the model's template).

    Chat data without a template was trained as ``role: content\\n`` turns; prompt/completion
    data as the prompt followed directly by the completion (messages: a user turn holding the
    prompt, an assistant turn holding the completion). Both start with BOS where the tokenizer
    adds one and end with EOS, as the training sequences do; ``add_generation_prompt`` gives
    what the model was trained to continue.
    """
    if encoder.seq2seq or data_format not in ("chat", "prompt_completion"):
        return None
    if data_format == "chat" and encoder.template and not encoder._template_failed:
        return None
    tok = encoder.tok
    start = "{{ bos_token }}" if encoder.adds_bos and tok.bos_token else ""
    end = "{{ eos_token }}" if tok.eos_token else ""
    if data_format == "chat":
        turns = (
            "{%- for message in messages -%}"
            "{{ message['role'] + ': ' + message['content'] + '\\n' }}"
            "{%- endfor -%}"
        )
        prompt = "{{ 'assistant: ' }}"
    else:
        turns = "{%- for message in messages -%}{{ message['content'] }}{%- endfor -%}"
        prompt = ""
    return f"{start}{turns}{{%- if add_generation_prompt -%}}{prompt}{{%- else -%}}{end}{{%- endif -%}}"


def keep_training_format(encoder: Encoder, data_format: str) -> None:
    """Give the tokenizer the chat template of training's format, before it is saved."""
    template = training_chat_template(encoder, data_format)
    if template is not None:
        encoder.tok.chat_template = template
