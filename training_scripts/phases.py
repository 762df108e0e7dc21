"""The phases of a run, as the job page names them: one ``phase`` event as each starts, and
how long each took (the ``done`` event's ``phase_seconds``, which the platform learns from).

Standard library only. A phase entered twice adds up; the current one is counted up to now.
"""

from __future__ import annotations

import functools
import time

from reporting import emit

PHASES = ("preparing_data", "loading_model", "training", "evaluating", "saving", "generating_samples")

_seconds: dict[str, float] = {}
_current: tuple[str, float] | None = None
_evaluations = {"passes": 0, "seconds": 0.0}


def start(phase: str) -> None:
    """Close the running phase and open `phase` (announced on stdout)."""
    global _current
    _close()
    _current = (phase, time.monotonic())
    emit("phase", phase=phase)


def seconds() -> dict[str, float]:
    """{phase: seconds} of the phases so far, the running one up to now."""
    _close()
    return {name: round(value, 3) for name, value in _seconds.items()}


def _close() -> None:
    global _current
    if _current is not None:
        name, began = _current
        now = time.monotonic()
        _seconds[name] = _seconds.get(name, 0.0) + now - began
        _current = (name, now)


def timed_evaluation(function):
    """Count and time each pass over the evaluation data (during training and at the end): the
    platform tells the training steps' speed from the evaluations' within the training phase."""

    @functools.wraps(function)
    def timed(*args, **kwargs):
        began = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            _evaluations["passes"] += 1
            _evaluations["seconds"] += time.monotonic() - began

    return timed


def evaluations() -> dict:
    """{"passes": n, "seconds": s} of the evaluation passes so far."""
    return {"passes": _evaluations["passes"], "seconds": round(_evaluations["seconds"], 3)}
