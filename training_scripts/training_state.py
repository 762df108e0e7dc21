"""The state of a training run: what a checkpoint holds, built in one place, saved in one place.

Resuming from a checkpoint restores exactly this (model or adapter, optimizer, scheduler,
scaler, step, epoch, the running figures) plus the RNG state.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from hardware import Hardware
from outputs import write_json
from schedule import Schedule
from transformers import get_scheduler


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


@dataclass
class TrainingState:
    model: Any
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler | None
    tracker: Tracker
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs begun: the data order of epoch e comes from seed + e
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


def save_checkpoint(training: TrainingState, tokenizer, checkpoint_dir: str, keep: int = 2) -> str:
    """checkpoint-<step>: written under a temporary name and renamed, so a kill never leaves half of one."""
    step = training.step
    path = os.path.join(checkpoint_dir, f"checkpoint-{step}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    training.model.save_pretrained(tmp)  # a LoRA model saves only its adapter
    tokenizer.save_pretrained(tmp)
    write_json(os.path.join(tmp, "state.json"), {"step": step})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    existing = sorted(
        glob.glob(os.path.join(checkpoint_dir, "checkpoint-*[0-9]")), key=lambda p: int(p.rsplit("-", 1)[-1])
    )
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path
