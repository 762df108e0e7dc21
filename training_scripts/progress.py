"""The progress protocol of finetune.py: one JSON object per line on stdout.

Standard library only: the Django side imports it (``training_scripts.progress``) to parse
the lines (local subprocess stdout or CloudWatch log lines) and to hand
``METRIC_DEFINITIONS`` to SageMaker; finetune.py imports it as ``progress`` to write them.

Every line is ``json.dumps`` of a dict whose first key is ``"event"`` followed by that
event's fields in the order of ``EVENT_FIELDS`` (the metric regexes rely on ``"event"``
coming first and on the default ``", "`` / ``": "`` separators). Non-finite floats are
written as ``null``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from typing import Any, TextIO

__all__ = [
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "METRIC_DEFINITIONS",
    "emit",
    "format_event",
    "match_metrics",
    "parse_event",
    "set_stream",
]

EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "start": (
        "total_steps",
        "epochs",
        "samples",
        "eval_samples",
        "tokens",
        "total_parameters",
        "trainable_parameters",
        "device",
        "precision",
        "method",
        "base_model",
        "max_seq_length",
    ),
    "progress": (
        "step",
        "total_steps",
        "epoch",
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "eta_seconds",
    ),
    "eval": ("step", "total_steps", "epoch", "eval_loss", "perplexity"),
    "checkpoint": ("step", "path"),
    "done": (
        "step",
        "total_steps",
        "epoch",
        "train_loss",
        "eval_loss",
        "perplexity",
        "train_runtime",
        "train_tokens",
        "tokens_per_second",
        "model_dir",
        "output_dir",
    ),
    "error": ("message", "errors"),
    "stopped": ("step", "total_steps", "reason", "model_saved", "model_dir"),
    "phase": ("phase",),
}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_FIELDS)

_NUM = r"([0-9.eE+-]+)"

# SageMaker metric definitions reading the same stdout lines (in CloudWatch).
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train:loss", "Regex": rf'"event": "progress".*?"loss": {_NUM}'},
    {"Name": "train:learning_rate", "Regex": rf'"event": "progress".*?"learning_rate": {_NUM}'},
    {"Name": "train:grad_norm", "Regex": rf'"event": "progress".*?"grad_norm": {_NUM}'},
    {"Name": "train:tokens_per_second", "Regex": rf'"event": "progress".*?"tokens_per_second": {_NUM}'},
    {"Name": "train:epoch", "Regex": rf'"event": "progress".*?"epoch": {_NUM}'},
    {"Name": "eval:loss", "Regex": rf'"event": "eval".*?"eval_loss": {_NUM}'},
    {"Name": "eval:perplexity", "Regex": rf'"event": "eval".*?"perplexity": {_NUM}'},
]

_stream: TextIO | None = None
_lock = threading.Lock()


def set_stream(stream: TextIO | None) -> None:
    """Where :func:`emit` writes (default: ``sys.stdout`` at call time)."""
    global _stream
    _stream = stream


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def format_event(event: str, **fields: Any) -> str:
    """The JSON line (without newline) for one event; known fields first, in protocol order."""
    ordered: dict[str, Any] = {"event": event}
    for key in EVENT_FIELDS.get(event, ()):
        if key in fields:
            ordered[key] = fields[key]
    for key, value in fields.items():
        if key not in ordered:
            ordered[key] = value
    return json.dumps(_clean(ordered), ensure_ascii=False, allow_nan=False, default=str)


def emit(event: str, **fields: Any) -> str:
    """Write one event line and flush. Returns the line."""
    line = format_event(event, **fields)
    stream = _stream or sys.stdout
    with _lock:
        stream.write(line + "\n")
        stream.flush()
    return line


def parse_event(line: str | bytes) -> dict[str, Any] | None:
    """The event dict in ``line``, or None when the line is not a protocol event.

    Tolerates a prefix before the JSON (e.g. a log timestamp) and a trailing newline.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    start = line.find('{"event"')
    if start < 0:
        return None
    try:
        obj = json.loads(line[start:].strip())
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("event") not in EVENT_FIELDS:
        return None
    return obj


def match_metrics(line: str) -> dict[str, float]:
    """Apply METRIC_DEFINITIONS to one line as SageMaker would: {metric name: value}."""
    found: dict[str, float] = {}
    for definition in METRIC_DEFINITIONS:
        m = re.search(definition["Regex"], line)
        if m:
            try:
                found[definition["Name"]] = float(m.group(1))
            except ValueError:
                continue
    return found
