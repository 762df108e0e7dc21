#!/usr/bin/env python
"""LLM Tuner training entry point (local subprocess and SageMaker training container).

Contract (see README.md):

    python finetune.py [--train_dir D] [--validation_dir D] [--model_dir D] [--output_dir D]
                       [--checkpoint_dir D] [--init_model_dir D] [--<hyperparameter> <value> ...]

Directories default from SM_CHANNEL_TRAIN, SM_CHANNEL_VALIDATION, SM_MODEL_DIR,
SM_OUTPUT_DATA_DIR, SM_CHECKPOINT_DIR, SM_CHANNEL_INIT_MODEL. A run continues by itself from
the newest complete checkpoint in the checkpoint folder. Hyperparameter values may be
JSON-encoded (SageMaker does that).
stdout carries only protocol events (one JSON object per line, see progress.py);
everything else goes to stderr.

Exit status: 0 done; 1 error (an ``error`` event says why); 2 invalid hyperparameters or
arguments (``error`` event with ``errors``: {field: message}); 128+signal (143 for SIGTERM)
when stopped by a signal (``stopped`` event).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hyperparameters as hp  # noqa: E402
import progress  # noqa: E402
import reporting  # noqa: E402

PATH_FLAGS = {
    "train_dir": "SM_CHANNEL_TRAIN",
    "validation_dir": "SM_CHANNEL_VALIDATION",
    "model_dir": "SM_MODEL_DIR",
    "output_dir": "SM_OUTPUT_DATA_DIR",
    "checkpoint_dir": "SM_CHECKPOINT_DIR",
    "init_model_dir": "SM_CHANNEL_INIT_MODEL",  # a saved model (or its model.tar.gz) to continue from
}


class UsageError(Exception):
    """Bad command line or hyperparameters (exit 2)."""

    def __init__(self, message: str, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.errors = errors or {}


class StopRequested(BaseException):  # noqa: N818 - BaseException so `except Exception` does not swallow it
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class RunState:
    """Shared with engine.py: where we are, and whether a stop signal came."""

    def __init__(self) -> None:
        self.phase = "setup"  # setup | train | save | samples
        self.stop_signal: int | None = None
        self.step = 0
        self.total_steps: int | None = None
        self.model_dir: str | None = None
        self.model_saved = False

    def stop_requested(self) -> bool:
        return self.stop_signal is not None


STATE = RunState()


def parse_args(argv: list[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """Split ``--name value`` / ``--name=value`` / bare ``--flag`` into (paths, raw hyperparameters)."""
    paths: dict[str, str | None] = {}
    raw: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise UsageError(f"unexpected argument {token!r}: arguments are --name value pairs")
        name, sep, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not sep:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                value = "true"
        i += 1
        if name in PATH_FLAGS:
            paths[name] = value
        elif name.startswith("sagemaker_"):
            continue  # framework parameters the SageMaker toolkit may pass along
        else:
            raw[name] = value
    for name, env in PATH_FLAGS.items():
        if not paths.get(name):
            paths[name] = os.environ.get(env) or None
    paths["model_dir"] = paths["model_dir"] or os.path.abspath("model")
    paths["output_dir"] = paths["output_dir"] or os.path.abspath("output")
    if not paths.get("train_dir"):
        raise UsageError(
            "no training data: pass --train_dir or set SM_CHANNEL_TRAIN", {"train_dir": "required"}
        )
    if not paths.get("checkpoint_dir"):
        sm_checkpoints = "/opt/ml/checkpoints"
        paths["checkpoint_dir"] = (
            sm_checkpoints
            if os.environ.get("SM_MODEL_DIR") and os.path.isdir(sm_checkpoints)
            else os.path.join(paths["output_dir"], "checkpoints")
        )
    return paths, raw


def _on_signal(signum: int, frame) -> None:  # noqa: ARG001
    if STATE.stop_signal is None and STATE.phase in ("train", "save"):
        # Finish the current optimizer step (or the save in progress), then stop cleanly.
        STATE.stop_signal = signum
        print(f"finetune: signal {signum} received, stopping after the current step", file=sys.stderr)
        return
    STATE.stop_signal = STATE.stop_signal or signum
    raise StopRequested(signum)


def _take_over_stdout():
    """Keep the real stdout for events only; route fd 1 and sys.stdout to stderr."""
    sys.stderr.flush()
    events_fd = os.dup(1)
    events = os.fdopen(events_fd, "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    progress.set_stream(events)
    return events


def _scrub(message: str) -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token and len(token) > 4:
        message = message.replace(token, "***")
    return message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _take_over_stdout()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        paths, raw = parse_args(argv)
        clean, errors = hp.validate_hyperparameters(raw)
        if errors:
            raise UsageError(hp.format_errors(errors), errors)
        import engine  # heavy (torch, transformers): only once the arguments are known good

        return engine.run(clean, paths, STATE)
    except UsageError as exc:
        reporting.emit("error", message=_scrub(str(exc)), errors=exc.errors)
        return 2
    except StopRequested as exc:
        reporting.emit(
            "stopped",
            step=STATE.step,
            total_steps=STATE.total_steps,
            reason=signal.Signals(exc.signum).name,
            model_saved=STATE.model_saved,
            model_dir=STATE.model_dir if STATE.model_saved else None,
        )
        return 128 + exc.signum
    except Exception as exc:  # every failure becomes an error event
        traceback.print_exc(file=sys.stderr)
        message = getattr(exc, "user_message", None) or f"{type(exc).__name__}: {exc}"
        reporting.emit("error", message=_scrub(message))
        return 1


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    sys.exit(code)
