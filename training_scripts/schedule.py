"""Schedule: how many optimizer steps, and when to log, evaluate and checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    batch_size: int
    gradient_accumulation_steps: int
    steps_per_epoch: int
    total_steps: int
    logging_steps: int
    eval_steps: int
    save_steps: int  # 0: no checkpoints every N steps
    checkpoint_seconds: float = 0.0  # also a checkpoint once this long went by since the last (0: off)

    def epoch_at(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    def is_logging_step(self, step: int) -> bool:
        return step % self.logging_steps == 0 or step == self.total_steps

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_steps == 0 and step < self.total_steps  # the last step evaluates anyway

    def is_save_step(self, step: int) -> bool:
        return bool(self.save_steps) and step % self.save_steps == 0 and step < self.total_steps

    def is_checkpoint_due(self, step: int, seconds_since_checkpoint: float) -> bool:
        """Every save_steps, and by time (checkpoint_minutes); the final model needs no checkpoint."""
        on_time = bool(self.checkpoint_seconds) and seconds_since_checkpoint >= self.checkpoint_seconds
        return self.is_save_step(step) or (on_time and step < self.total_steps)


def plan_schedule(hparams: dict, train_examples: int, world_size: int = 1) -> Schedule:
    """max_steps when set, else epochs over the data; logging and eval steps default from the total.

    With ``world_size`` processes an optimizer step takes batch_size x accumulation x world_size
    examples (each process its share of the epoch, see batching.epoch_batches).
    """
    batch_size, accumulation = hparams["batch_size"], hparams["gradient_accumulation_steps"]
    micro_per_epoch = math.ceil(math.ceil(train_examples / batch_size) / world_size)
    steps_per_epoch = math.ceil(micro_per_epoch / accumulation)
    total_steps = hparams["max_steps"] or max(1, math.ceil(hparams["epochs"] * steps_per_epoch))
    return Schedule(
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        logging_steps=hparams["logging_steps"] or max(1, total_steps // 100),
        eval_steps=hparams["eval_steps"] or max(1, math.ceil(total_steps / 5)),
        save_steps=hparams["save_steps"],
        checkpoint_seconds=hparams["checkpoint_minutes"] * 60,
    )


def used_hyperparameters(hparams: dict, schedule: Schedule, max_len: int) -> dict:
    """The values this run used (hyperparameters.json): defaults resolved."""
    return dict(
        hparams, logging_steps=schedule.logging_steps, eval_steps=schedule.eval_steps, max_seq_length=max_len
    )
