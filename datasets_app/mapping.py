"""How a record becomes a training sample: the mapping string and its samplers.

A mapping is written as one string, the same in the upload form, on the
dataset page and in `manage.py import_dataset --mapping`:

    all-columns                               every column as "name: value" lines (text)
    template:{Industry} in {Year}: {Value}    fill the columns into a template (text)
    text:COLUMN                               one column is the text
    prompt:COLUMN,completion:COLUMN           two columns are prompt and completion
    messages  /  messages:KEY                 a list of chat messages (JSON data)

Empty or "auto" picks one from the columns (`resolve_auto`). `parse_mapping`
raises `MappingError` with a message for the person who typed it.

A sampler turns one record (a list of cells for tables, a dict for JSON
objects, a str for plain text) into `(output object, text)`: the object is
written as one JSONL line in one of three shapes, {"text"}, {"prompt",
"completion"} or {"messages": [{"role", "content"}, ...]}; the text is what
tokens and characters are counted on. A record that cannot become a sample
raises `SampleError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .readers import PreparationError

AUTO = "auto"
ALL_COLUMNS = "all-columns"
TEMPLATE = "template"
TEXT = "text"
PROMPT_COMPLETION = "prompt-completion"
MESSAGES = "messages"

SHAPE_TEXT = "text"
SHAPE_PROMPT_COMPLETION = "prompt_completion"
SHAPE_MESSAGES = "messages"

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}

SYNTAX = (
    "Use all-columns, template:TEXT WITH {COLUMN}S, text:COLUMN, prompt:COLUMN,completion:COLUMN or messages."
)


class MappingError(PreparationError):
    """The mapping string is malformed or names a column the file does not have."""


class SampleError(Exception):
    """This record cannot become a sample; the message is the reason shown beside its line number."""


@dataclass(frozen=True)
class Mapping:
    kind: str
    template: str = ""
    column: str = ""
    prompt: str = ""
    completion: str = ""

    def __str__(self) -> str:
        if self.kind == TEMPLATE:
            return f"template:{self.template}"
        if self.kind == TEXT:
            return f"text:{self.column}"
        if self.kind == PROMPT_COMPLETION:
            return f"prompt:{self.prompt},completion:{self.completion}"
        if self.kind == MESSAGES and self.column and self.column != "messages":
            return f"messages:{self.column}"
        return self.kind

    @property
    def shape(self) -> str:
        if self.kind == PROMPT_COMPLETION:
            return SHAPE_PROMPT_COMPLETION
        if self.kind == MESSAGES:
            return SHAPE_MESSAGES
        return SHAPE_TEXT


_PROMPT_COMPLETION = re.compile(r"^prompt:(?P<prompt>.+?)\s*,\s*completion:(?P<completion>.+)$", re.DOTALL)


def parse_mapping(spec: str | None) -> Mapping:
    """Parse a mapping string; "" and "auto" mean automatic."""
    spec = (spec or "").strip()
    if not spec or spec.lower() == AUTO:
        return Mapping(AUTO)
    lowered = spec.lower()
    if lowered in (ALL_COLUMNS, "all_columns", "all"):
        return Mapping(ALL_COLUMNS)
    if lowered == MESSAGES:
        return Mapping(MESSAGES, column="messages")
    head, sep, rest = spec.partition(":")
    head = head.strip().lower()
    if not sep:
        raise MappingError(f"Unknown mapping {spec!r}. {SYNTAX}")
    if head == TEMPLATE:
        parse_template(rest)  # raises on a malformed template
        return Mapping(TEMPLATE, template=rest)
    if head == TEXT:
        column = rest.strip()
        if not column:
            raise MappingError("text: needs a column name, as in text:body.")
        return Mapping(TEXT, column=column)
    if head == MESSAGES:
        column = rest.strip()
        if not column:
            raise MappingError("messages: needs a key name, as in messages:conversations.")
        return Mapping(MESSAGES, column=column)
    if head in ("prompt", "completion"):
        match = _PROMPT_COMPLETION.match(spec.strip())
        if not match:
            raise MappingError("Write prompt and completion as prompt:COLUMN,completion:COLUMN.")
        prompt, completion = match["prompt"].strip(), match["completion"].strip()
        if not prompt or not completion:
            raise MappingError("prompt:COLUMN,completion:COLUMN needs both column names.")
        return Mapping(PROMPT_COMPLETION, prompt=prompt, completion=completion)
    raise MappingError(f"Unknown mapping {spec!r}. {SYNTAX}")


_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split a template into (literal, column or None) parts; {{ and }} are literal braces."""
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    fields = 0
    position = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        literal.append(template[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif token in ("{", "}"):
            raise MappingError(
                f"The template has an unmatched {token!r} at character {match.start() + 1}; "
                f"write {token * 2} for a literal brace."
            )
        else:
            name = match.group(1).strip()
            if not name:
                raise MappingError(
                    f"The template has an empty {{}} at character {match.start() + 1}; "
                    "put a column name in it."
                )
            parts.append(("".join(literal), name))
            literal = []
            fields += 1
    literal.append(template[position:])
    if "".join(literal):
        parts.append(("".join(literal), None))
    if not fields:
        raise MappingError("The template names no column; put column names in braces, as in {Year}.")
    return parts


# --- Resolving names ------------------------------------------------------------


def _find_column(name: str, columns: Sequence[str], what: str = "column") -> str:
    if name in columns:
        return name
    folded = [c for c in columns if c.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    listed = ", ".join(columns[:30]) + (", …" if len(columns) > 30 else "")
    raise MappingError(
        f"The mapping names {what} {name!r}, which is not in the file. The {what}s are: {listed}."
    )


def _column_named(columns: Sequence[str], *names: str) -> str | None:
    lookup = {c.casefold(): c for c in columns}
    for name in names:
        if name in lookup:
            return lookup[name]
    return None


def resolve_auto(kind: str, columns: Sequence[str]) -> Mapping:
    """The mapping used when none is given, from the record kind and the columns (or first object's keys)."""
    if kind == "text":
        return Mapping(TEXT, column="")
    if kind == "objects":
        for key in ("messages", "conversations"):
            found = _column_named(columns, key)
            if found:
                return Mapping(MESSAGES, column=found)
    prompt = _column_named(columns, "prompt")
    completion = _column_named(columns, "completion")
    if prompt and completion:
        return Mapping(PROMPT_COMPLETION, prompt=prompt, completion=completion)
    chosen = _column_named(columns, "chosen")
    if prompt and chosen:  # a preference dataset (prompt, chosen, rejected): train on the chosen answers
        return Mapping(PROMPT_COMPLETION, prompt=prompt, completion=chosen)
    text = _column_named(columns, "text")
    if text:
        return Mapping(TEXT, column=text)
    if kind == "table" and len(columns) == 1:
        return Mapping(TEXT, column=columns[0])
    return Mapping(ALL_COLUMNS)


# --- Samplers -----------------------------------------------------------------

Sampler = Callable[[Any], tuple[dict, str]]


@dataclass(frozen=True)
class BoundMapping:
    mapping: Mapping
    sample: Sampler

    @property
    def shape(self) -> str:
        return self.mapping.shape


def bind_mapping(mapping: Mapping, kind: str, columns: Sequence[str]) -> BoundMapping:
    """Resolve `auto` and column names against this file and return its sampler.

    `kind` is the reader's record kind: "table" (rows are lists of cells),
    "objects" (dicts) or "text" (str).
    """
    if mapping.kind == AUTO:
        mapping = resolve_auto(kind, columns)
    if kind == "text":
        if mapping.kind not in (TEXT, ALL_COLUMNS) or mapping.column:
            raise MappingError(
                "Plain text has no columns: each line (or paragraph) is a sample, with no mapping."
            )
        return BoundMapping(Mapping(TEXT), _text_sample)
    if kind == "table":
        return BoundMapping(*_table_sampler(mapping, list(columns)))
    return BoundMapping(*_object_sampler(mapping, list(columns)))


def _text_sample(text: str) -> tuple[dict, str]:
    if not text.strip():
        raise SampleError("the text is empty")
    return {"text": text}, text


def _nonempty(value: str, what: str) -> str:
    if not value.strip():
        raise SampleError(f"the {what} is empty")
    return value


def _table_sampler(mapping: Mapping, columns: list[str]) -> tuple[Mapping, Sampler]:
    index = {name: i for i, name in enumerate(columns)}
    if mapping.kind == ALL_COLUMNS:
        names = columns

        def all_columns(row: list[str]) -> tuple[dict, str]:
            text = "\n".join(
                [f"{name}: {value}" for name, cell in zip(names, row, strict=True) if (value := cell.strip())]
            )
            if not text:
                raise SampleError("every cell is empty")
            return {"text": text}, text

        return mapping, all_columns
    if mapping.kind == TEMPLATE:
        parts = parse_template(mapping.template)
        pieces = []
        for literal, name in parts:
            pieces.append(literal.replace("{", "{{").replace("}", "}}"))
            if name is not None:
                pieces.append(f"{{{index[_find_column(name, columns)]}}}")
        fmt = "".join(pieces).format

        def template(row: list[str]) -> tuple[dict, str]:
            text = fmt(*row).strip()
            if not text:
                raise SampleError("the filled-in template is empty")
            return {"text": text}, text

        return mapping, template
    if mapping.kind == TEXT:
        column = _find_column(mapping.column, columns)
        at = index[column]

        def text_column(row: list[str]) -> tuple[dict, str]:
            text = row[at]
            if not text.strip():
                raise SampleError(f"{column} is empty")
            return {"text": text}, text

        return Mapping(TEXT, column=column), text_column
    if mapping.kind == PROMPT_COMPLETION:
        prompt = _find_column(mapping.prompt, columns)
        completion = _find_column(mapping.completion, columns)
        p, c = index[prompt], index[completion]

        def prompt_completion(row: list[str]) -> tuple[dict, str]:
            prompt_text, completion_text = row[p], row[c]
            if not prompt_text.strip():
                raise SampleError(f"the prompt ({prompt}) is empty")
            if not completion_text.strip():
                raise SampleError(f"the completion ({completion}) is empty")
            return {"prompt": prompt_text, "completion": completion_text}, prompt_text + completion_text

        return Mapping(PROMPT_COMPLETION, prompt=prompt, completion=completion), prompt_completion
    raise MappingError(
        "A table has no chat messages; use all-columns, template:, text: or prompt:,completion:."
    )


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _get(obj: dict, key: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise SampleError(f"there is no {key!r} key") from None


def _string(obj: dict, key: str, what: str) -> str:
    value = _get(obj, key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SampleError(f"{what} ({key!r}) must be text, not {type(value).__name__}")
    if not value.strip():
        raise SampleError(f"{what} ({key!r}) is empty")
    return value


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or OpenAI-style parts [{"type": "text", "text": ...}]."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def normalise_messages(value: Any, key: str = "messages") -> list[dict[str, str]]:
    """Validate a chat (OpenAI role/content or ShareGPT from/value) into [{"role", "content"}, ...]."""
    if not isinstance(value, list) or not value:
        raise SampleError(f"{key!r} must be a non-empty list of messages")
    messages = []
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict):
            raise SampleError(f"message {number} is not an object with role and content")
        role = message.get("role", message.get("from"))
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise SampleError(f"message {number} has role {role!r}; use system, user or assistant")
        content = _content_text(message.get("content", message.get("value")))
        if content is None or not content.strip():
            raise SampleError(f"message {number} ({role}) has no text content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise SampleError("there is no assistant message to learn from")
    return messages


def _object_sampler(mapping: Mapping, columns: list[str]) -> tuple[Mapping, Sampler]:
    if mapping.kind == ALL_COLUMNS:

        def all_columns(obj: dict) -> tuple[dict, str]:
            text = "\n".join([f"{key}: {value}" for key, raw in obj.items() if (value := _cell(raw).strip())])
            if not text:
                raise SampleError("every value is empty")
            return {"text": text}, text

        return mapping, all_columns
    if mapping.kind == TEMPLATE:
        parts = [
            (literal, _find_column(name, columns, "key") if name else None)
            for literal, name in parse_template(mapping.template)
        ]

        def template(obj: dict) -> tuple[dict, str]:
            text = "".join(
                [literal + (_cell(_get(obj, key)) if key else "") for literal, key in parts]
            ).strip()
            if not text:
                raise SampleError("the filled-in template is empty")
            return {"text": text}, text

        return mapping, template
    if mapping.kind == TEXT:
        key = _find_column(mapping.column, columns, "key")

        def text_key(obj: dict) -> tuple[dict, str]:
            text = _string(obj, key, "the text")
            return {"text": text}, text

        return Mapping(TEXT, column=key), text_key
    if mapping.kind == PROMPT_COMPLETION:
        prompt = _find_column(mapping.prompt, columns, "key")
        completion = _find_column(mapping.completion, columns, "key")

        def prompt_completion(obj: dict) -> tuple[dict, str]:
            prompt_text = _string(obj, prompt, "the prompt")
            completion_text = _string(obj, completion, "the completion")
            return {"prompt": prompt_text, "completion": completion_text}, prompt_text + completion_text

        return Mapping(PROMPT_COMPLETION, prompt=prompt, completion=completion), prompt_completion
    if mapping.kind == MESSAGES:
        key = _find_column(mapping.column or "messages", columns, "key")

        def messages(obj: dict) -> tuple[dict, str]:
            chat = normalise_messages(_get(obj, key), key)
            return {"messages": chat}, "\n".join([m["content"] for m in chat])

        return Mapping(MESSAGES, column=key), messages
    raise MappingError(f"Unknown mapping {mapping.kind!r}. {SYNTAX}")


def display_text(sample: dict) -> str:
    """One readable string for a sample of any shape, for previews."""
    if "messages" in sample:
        return "\n".join(f"{m['role']}: {m['content']}" for m in sample["messages"])
    if "prompt" in sample:
        return f"{sample['prompt']} → {sample['completion']}"
    return sample.get("text", "")
