"""Everything the run says: protocol events on stdout, log lines on stderr, the user's error.

Standard library only. Every event of a run goes through ``emit``, so this is the one
place that decides which process speaks: rank 0 only when training is distributed, except an
``error``, which any process reports (naming itself), so the failure that stopped the run is seen.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import distributed
import progress


class TrainingError(Exception):
    """A failure with a message meant for the user (becomes the ``error`` event's message)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.user_message = message


def emit(event: str, **fields: Any) -> str | None:
    if not distributed.is_main():
        if event != "error":
            return None
        fields["message"] = (
            f"process {distributed.rank()} of {distributed.world_size()}: {fields.get('message')}"
        )
        fields["rank"] = distributed.rank()
    return progress.emit(event, **fields)


def log(message: str) -> None:
    print(f"finetune: {message}", file=sys.stderr, flush=True)


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(loss) if loss < 80 else None
