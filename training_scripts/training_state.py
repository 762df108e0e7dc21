"""The state of a training run: what a checkpoint holds, built in one place, saved in one place.

A checkpoint folder ``checkpoint-<step>`` holds the model or adapter and the tokenizer
(``save_pretrained``; an FSDP run gathers its shards into the same full weights first),
``trainer_state.pt`` (the optimizer's state keyed by parameter name, so one process, DDP and
FSDP read each other's; LR scheduler, grad scaler, RNG states) and ``state.json`` (step,
epoch, position in the epoch's data, the tracker's figures and log history, the settings the
data order depends on, and the size of every file). It is
written under ``checkpoint-<step>.tmp``, ``state.json`` last, then renamed into place; it
counts as complete only when ``state.json`` is there and every file it lists has its size
(a folder copied back from S3 in part is skipped too). Nothing in it names an absolute
path, so it can be moved (local storage, S3, another machine).

``resume_from_latest`` restores all of it, so the run goes on as if never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import distributed
import torch
from hardware import Hardware
from outputs import write_json
from reporting import TrainingError, log
from schedule import Schedule
from transformers import get_scheduler

CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
STATE_FILE = "state.json"
TRAINER_STATE_FILE = "trainer_state.pt"
CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2


@dataclass
class Tracker:
    """Training time (evaluation and checkpoints left out) and the running figures of the run."""

    started: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0  # seconds spent in eval / checkpoints
    cpu_started: float = field(default_factory=time.process_time)
    cpu_excluded: float = 0.0
    train_tokens: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    log_history: list[dict] = field(default_factory=list)
    base_evaluation: dict | None = None  # the base model's answers from before training (evaluation.py)
    runtime: float = 0.0  # set when training ends
    cpu_seconds: float = 0.0

    def train_time(self) -> float:
        return time.perf_counter() - self.started - self.excluded

    def train_cpu_time(self) -> float:
        return time.process_time() - self.cpu_started - self.cpu_excluded

    @contextlib.contextmanager
    def excluding(self):
        """Time spent inside does not count as training (evaluation, checkpoints)."""
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0
            self.cpu_excluded += time.process_time() - c0

    def stop_clock(self) -> None:
        self.runtime = self.train_time()
        self.cpu_seconds = self.train_cpu_time()

    def train_loss(self) -> float | None:
        return self.loss_sum / self.loss_count if self.loss_count else None

    def snapshot(self) -> dict:
        """The figures so far, for a checkpoint."""
        return {
            "train_seconds": self.train_time(),
            "train_cpu_seconds": self.train_cpu_time(),
            "train_tokens": self.train_tokens,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "base_evaluation": self.base_evaluation,
        }

    def restore(self, figures: dict, log_history: list[dict]) -> None:
        """Continue the clocks and figures of a checkpoint: a resumed run reports as one run."""
        self.started = time.perf_counter() - figures["train_seconds"]
        self.cpu_started = time.process_time() - figures["train_cpu_seconds"]
        self.excluded = self.cpu_excluded = 0.0
        self.train_tokens = figures["train_tokens"]
        self.loss_sum = figures["loss_sum"]
        self.loss_count = figures["loss_count"]
        self.base_evaluation = figures.get("base_evaluation")
        self.log_history = list(log_history)


@dataclass
class TrainingState:
    model: Any
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler | None
    tracker: Tracker
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs begun: the data order of epoch e comes from seed + e
    epoch_micro_batches: int = 0  # micro-batches of the current epoch trained on (a resume skips them)
    eval_loss: float | None = None  # the latest evaluation's


def start_training(model, hparams: dict, schedule: Schedule, hardware: Hardware) -> TrainingState:
    optimizer = make_optimizer(model, hparams, hardware.device)
    lr_scheduler = get_scheduler(
        hparams["lr_scheduler"],
        optimizer,
        num_warmup_steps=math.ceil(hparams["warmup_ratio"] * schedule.total_steps),
        num_training_steps=schedule.total_steps,
    )
    return TrainingState(model, optimizer, lr_scheduler, hardware.grad_scaler(), Tracker())


def make_optimizer(model, hparams: dict, device: torch.device):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": hparams["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    lr = hparams["learning_rate"]
    if device.type in ("cuda", "cpu") and all(p.dtype == torch.float32 for g in groups for p in g["params"]):
        with contextlib.suppress(Exception):
            return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr)


# checkpoints ------------------------------------------------------------------------


def run_fingerprint(hparams: dict, schedule: Schedule, train_examples: int, vocab_size: int) -> dict:
    """The settings a checkpoint's data position and weights depend on; a resume needs the same."""
    return {
        "method": hparams["method"],
        "seed": hparams["seed"],
        "packing": hparams["packing"],
        "batch_size": schedule.batch_size,
        "gradient_accumulation_steps": schedule.gradient_accumulation_steps,
        "steps_per_epoch": schedule.steps_per_epoch,
        "train_examples": train_examples,
        "vocab_size": vocab_size,
        "world_size": distributed.world_size(),  # the data position is per process
    }


def gathered_weights(model) -> dict[str, torch.Tensor] | None:
    """The full weights of an FSDP-sharded model on the CPU of rank 0 (the others get {}); None for a
    model that is whole on each process (its own save_pretrained writes it). Under FSDP a collective:
    every process calls it."""
    from modelling import is_sharded

    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gathered_optimizer_state(training: TrainingState) -> dict:
    """The optimizer's state keyed by parameter name, full, on the CPU (rank 0's under FSDP, where
    every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        training.model, training.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def save_checkpoint(
    training: TrainingState,
    tokenizer,
    checkpoint_dir: str,
    fingerprint: dict,
    keep: int = KEEP_CHECKPOINTS,
    *,
    weights: dict | None = None,
    optimizer_state: dict | None = None,
) -> str:
    """checkpoint-<step>: written under a temporary name, state.json last, then renamed into place.

    ``weights`` and ``optimizer_state``: what gathered_weights / gathered_optimizer_state gave (under
    FSDP every process gathers, then rank 0 calls this); by default this process's own.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, f"checkpoint-{training.step}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    training.model.save_pretrained(tmp, state_dict=weights)  # a LoRA model saves only its adapter
    tokenizer.save_pretrained(tmp)
    if optimizer_state is None:
        optimizer_state = gathered_optimizer_state(training)
    torch.save(_trainer_state(training, optimizer_state), os.path.join(tmp, TRAINER_STATE_FILE))
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": training.step,
        "epoch": training.epoch,
        "epoch_micro_batches": training.epoch_micro_batches,
        "eval_loss": training.eval_loss,
        "tracker": training.tracker.snapshot(),
        "log_history": training.tracker.log_history,
        "run": fingerprint,
        "files": _file_sizes(tmp),
    }
    write_json(os.path.join(tmp, STATE_FILE), state)
    _fsync(os.path.join(tmp, STATE_FILE))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _prune(checkpoint_dir, keep)
    return path


def _trainer_state(training: TrainingState, optimizer_state: dict) -> dict:
    return {
        "optimizer": optimizer_state,
        "lr_scheduler": training.lr_scheduler.state_dict(),
        "scaler": training.scaler.state_dict() if training.scaler else None,
        "rng": _rng_state(),
    }


def _rng_state() -> dict:
    # numpy's generator is left out: nothing in training draws from it (dropout uses torch's).
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def _restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])


def _file_sizes(folder: str) -> dict[str, int]:
    sizes = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            sizes[os.path.relpath(full, folder).replace(os.sep, "/")] = os.path.getsize(full)
    return sizes


def _fsync(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _checkpoint_folders(checkpoint_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint-<step> folder, newest first (complete or not)."""
    try:
        names = os.listdir(checkpoint_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        match = CHECKPOINT_NAME.fullmatch(name)
        path = os.path.join(checkpoint_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def read_complete_state(path: str) -> dict | None:
    """The state.json of a complete checkpoint folder; None when it is half-written or damaged."""
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return None
    for name, size in state.get("files", {}).items():
        file = os.path.join(path, *name.split("/"))
        if not os.path.isfile(file) or os.path.getsize(file) != size:
            return None
    return state


def latest_checkpoint(checkpoint_dir: str | None) -> tuple[str, dict] | None:
    """(path, state) of the newest complete checkpoint in the folder, or None."""
    for _step, path in _checkpoint_folders(checkpoint_dir or ""):
        state = read_complete_state(path)
        if state is not None:
            return path, state
    return None


def _prune(checkpoint_dir: str, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; remove older, half-written and .tmp ones."""
    kept = 0
    for _step, path in _checkpoint_folders(checkpoint_dir):
        if kept < keep and read_complete_state(path) is not None:
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(checkpoint_dir):
        if name.startswith("checkpoint-") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)


def resume_from_latest(
    training: TrainingState, checkpoint_dir: str | None, fingerprint: dict, total_steps: int
) -> int:
    """Continue from the newest complete checkpoint, if any; returns the step resumed from (0: none).

    Call it last before training: it restores the RNG states too.
    """
    found = latest_checkpoint(checkpoint_dir)
    if found is None:
        return 0
    path, state = found
    name = os.path.basename(path)
    _check_same_run(name, state["run"], fingerprint)
    if state["step"] > total_steps:
        raise TrainingError(
            f"{name} in the checkpoint folder is at step {state['step']}, past this run's {total_steps} "
            "total steps: raise max_steps or epochs, or start with an empty checkpoint folder"
        )
    load_model_weights(training.model, path)
    trainer = torch.load(os.path.join(path, TRAINER_STATE_FILE), map_location="cpu", weights_only=True)
    load_optimizer_state(training, trainer["optimizer"])
    training.lr_scheduler.load_state_dict(trainer["lr_scheduler"])
    if training.scaler is not None and trainer["scaler"]:
        training.scaler.load_state_dict(trainer["scaler"])
    training.step = state["step"]
    training.epoch = state["epoch"]
    training.epoch_micro_batches = state["epoch_micro_batches"]
    training.eval_loss = state["eval_loss"]
    training.tracker.restore(state["tracker"], state["log_history"])
    _restore_rng(trainer["rng"])
    log(
        f"resuming from {name} in {checkpoint_dir}: step {training.step} of {total_steps}, "
        f"{training.epoch_micro_batches} micro-batches into epoch {training.epoch + 1}"
    )
    return training.step


def _check_same_run(name: str, saved: dict, current: dict) -> None:
    # A setting a checkpoint does not name is one its format did not record yet: not held against it.
    differ = [
        f"{key} {saved[key]!r} there, {value!r} here"
        for key, value in current.items()
        if key in saved and saved[key] != value
    ]
    if differ:
        processes = ""
        if "world_size" in saved and saved["world_size"] != current.get("world_size"):
            processes = (
                f"; a checkpoint resumes on as many processes (GPUs) as wrote it, here "
                f"{saved['world_size']}, since each one's place in the data is kept"
            )
        raise TrainingError(
            f"{name} in the checkpoint folder was written by a run with other settings "
            f"({'; '.join(differ)}){processes}: "
            "resume with the same hyperparameters and data, or start with an empty checkpoint folder"
        )


def load_optimizer_state(training: TrainingState, saved: dict) -> None:
    """The optimizer state of a checkpoint: keyed by parameter name (any layout: one process, DDP or
    FSDP, which shards it as it loads), or by position as checkpoints of this format first were."""
    if not _by_name(saved):
        training.optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        training.model, training.optimizer, saved, options=StateDictOptions(full_state_dict=True)
    )


def _by_name(saved: dict) -> bool:
    return any(isinstance(p, str) for group in saved.get("param_groups", []) for p in group.get("params", []))


def load_model_weights(model, path: str) -> None:
    """Load a checkpoint's weights (the adapter of a PEFT model, else the whole model) into ``model``."""
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        weights.update(load_file(os.path.join(path, name)))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        if result.unexpected_keys:
            raise TrainingError(
                f"{os.path.basename(path)} does not fit this adapter: {result.unexpected_keys[:3]}"
            )
        return
    from modelling import is_sharded

    if is_sharded(model):
        _load_sharded(model, weights, os.path.basename(path))
        return
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a weight of another shape
        raise TrainingError(f"{os.path.basename(path)} does not fit this model: {str(exc)[:500]}") from None
    loaded = {t.data_ptr() for k, t in model.state_dict().items() if k in weights}
    # save_pretrained leaves out tied weights (GPT-2's lm_head is the embedding): those are fine.
    untied_missing = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded]
    if result.unexpected_keys or untied_missing:
        raise TrainingError(
            f"{os.path.basename(path)} does not fit this model (missing {untied_missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )


def _load_sharded(model, weights: dict[str, torch.Tensor], name: str) -> None:
    """Full weights into an FSDP-sharded model: each process keeps its shard of them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    tied = set(getattr(model, "all_tied_weights_keys", None) or {})  # left out by save_pretrained
    try:
        result = set_model_state_dict(
            model, weights, options=StateDictOptions(full_state_dict=True, strict=False)
        )
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"{name} does not fit this model: {str(exc)[:500]}") from None
    missing = [k for k in result.missing_keys if k not in tied]
    if result.unexpected_keys or missing:
        raise TrainingError(
            f"{name} does not fit this model (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
