"""Train: a plain torch loop (token-weighted gradient accumulation, clipping, the LR schedule).

Reports progress at least every few seconds, evaluates and checkpoints on the schedule, and
stops after the current optimizer step once a stop signal came.

Under torchrun each process trains its share of every step (DDP or FSDP averages the gradients); what
decides the control flow (report now, stop) is agreed by all processes after each step, so none
waits in a collective the others never reach. With one process no collective runs at all.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import distributed
import phases
import torch
import torch.nn.functional as F
from batching import Batch, Datasets, epoch_batches, eval_batches
from hardware import Hardware
from modelling import gradient_sync, is_sharded, wrap_for_processes
from reporting import TrainingError, emit, finite, perplexity
from schedule import Schedule
from tokenization import IGNORE
from training_state import TrainingState, gathered_optimizer_state, gathered_weights, save_checkpoint

# The job page polls every 2 s; a progress line at least this often keeps its bar moving.
PROGRESS_MAX_INTERVAL_SECONDS = 2.0


def forward_loss(model, batch: Batch, hardware: Hardware, seq2seq: bool) -> torch.Tensor:
    """The loss summed over the batch's targets (the caller divides: token-weighted averages)."""
    ids = hardware.to_device(batch.input_ids)
    mask = None if batch.attention_mask is None else hardware.to_device(batch.attention_mask)
    targets = hardware.to_device(batch.targets)
    with hardware.autocast():
        if seq2seq:
            dec = hardware.to_device(batch.decoder_input_ids)
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )


@dataclass
class ProgressWindow:
    """The steps since the last progress event: what the next one reports."""

    started: float  # training time when it opened
    loss: torch.Tensor  # summed over the targets, left on the device until reported
    targets: int = 0
    tokens: int = 0


class Trainer:
    def __init__(
        self,
        training: TrainingState,
        datasets: Datasets,
        schedule: Schedule,
        hardware: Hardware,
        hparams: dict,
        run_state,
        *,
        seq2seq: bool,
        tokenizer,
        checkpoint_dir: str,
        run_fingerprint: dict,
    ):
        self.training = training
        self.tracker = training.tracker
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        # training.model stays the bare model (what checkpoints and the saved model hold); the
        # forward and backward passes go through its DDP wrapper when there are several processes.
        self.model = wrap_for_processes(training.model, hardware)
        self.stopping = False  # the stop every process agreed on (see _agree)
        self.datasets = datasets
        self.schedule = schedule
        self.hardware = hardware
        self.seed = hparams["seed"]
        self.clip = hparams["max_grad_norm"] if hparams["max_grad_norm"] > 0 else float("inf")
        self.run_state = run_state  # finetune.RunState: the stop signal, and the step a stop reports
        self.seq2seq = seq2seq
        self.tokenizer = tokenizer
        self.checkpoint_dir = checkpoint_dir
        self.run_fingerprint = run_fingerprint  # what a resume from our checkpoints must match
        self.last_checkpoint = time.monotonic()
        self.checkpoint_due = False
        self.checkpointed_step = training.step  # the step of the newest checkpoint (resumed from, or 0)
        self.trainable = [p for p in training.model.parameters() if p.requires_grad]
        self.grad_norm = torch.zeros(())  # the latest step's, reported with the next progress event
        self.last_micro_batch: tuple = ()
        self.window = self._open_window(self.tracker.train_time())

    def train(self) -> None:
        """Up to the last step of the schedule or a stop signal; then a final evaluation unless stopped."""
        self.model.train()
        while self._going():
            self._train_epoch(self._epoch_batches())
            if self._stopped():
                break  # the epoch's position stays as the stop's checkpoint saved it
            self.training.epoch += 1
            self.training.epoch_micro_batches = 0
        if self._stopped() and self.checkpointed_step != self.training.step:
            self._save_checkpoint()  # the stop came as an epoch ended
        self.hardware.synchronize()
        self.tracker.stop_clock()
        if not self._stopped() and self.datasets.eval is not None:
            phases.start("evaluating")
            self.training.eval_loss = self._evaluate_and_report()

    def _stopped(self) -> bool:
        """A stop signal came: at once with one process, else once all processes agreed on it."""
        return self.stopping if self.world_size > 1 else self.run_state.stop_requested()

    def _going(self) -> bool:
        return self.training.step < self.schedule.total_steps and not self._stopped()

    def _epoch_batches(self) -> Iterator[Batch]:
        batches = epoch_batches(
            self.datasets.train,
            self.schedule.batch_size,
            self.seed,
            self.training.epoch,
            self.hardware.pad_multiple,
            self.rank,
            self.world_size,
        )
        # A resumed run skips what the epoch already trained on (0 otherwise).
        return itertools.islice(batches, self.training.epoch_micro_batches, None)

    def _train_epoch(self, micro: Iterator[Batch]) -> None:
        while self._going():
            group = list(itertools.islice(micro, self.schedule.gradient_accumulation_steps))
            if not group:
                break  # the epoch is over
            self._optimizer_step(group)
            step = self.training.step
            evaluate = self.datasets.eval is not None and self.schedule.is_eval_step(step)
            if evaluate and not self._stopped():
                self.training.eval_loss = self._evaluate_and_report()
            # A stopped run always leaves a checkpoint to resume from (a signal during the eval too).
            if self.checkpoint_due or self._stopped():
                self._save_checkpoint()

    # one optimizer step -------------------------------------------------------------
    def _optimizer_step(self, group: list[Batch]) -> None:
        self._accumulate_gradients(group)
        learning_rate = self._apply_gradients()
        self.training.step += 1
        self.training.epoch_micro_batches += len(group)
        self.run_state.step = self.training.step
        self.checkpoint_due = self.schedule.is_checkpoint_due(
            self.training.step, time.monotonic() - self.last_checkpoint
        )
        due = self.tracker.train_time() - self.window.started >= PROGRESS_MAX_INTERVAL_SECONDS
        due, self.checkpoint_due = self._agree(due, self.checkpoint_due)
        # Also report every few seconds, so a watcher never sees a frozen bar on slow steps; and
        # before a checkpoint, which then holds every step's loss (a resume goes on from there).
        if self.schedule.is_logging_step(self.training.step) or due or self.checkpoint_due or self._stopped():
            self._report_progress(learning_rate)

    def _agree(self, due: bool, checkpoint_due: bool) -> tuple[bool, bool]:
        """With several processes: report, or checkpoint, if any clock says so, and stop if any got a
        signal, all alike (a checkpoint is a collective: one process alone would wait forever)."""
        if self.world_size == 1:
            return due, checkpoint_due
        due_anywhere, checkpoint_anywhere, signal_anywhere = distributed.all_max(
            [float(due), float(checkpoint_due), float(self.run_state.stop_signal or 0)], self.hardware.device
        )
        if signal_anywhere:
            self.stopping = True
            self.run_state.stop_signal = self.run_state.stop_signal or int(signal_anywhere)
        return bool(due_anywhere), bool(checkpoint_anywhere)

    def _accumulate_gradients(self, group: list[Batch]) -> None:
        """Backward over the micro-batches, each weighted by its share of the step's targets.

        With several processes the share is of all processes' targets (DDP then averages the
        gradients, hence the factor world_size), and gradients are exchanged on the last micro-batch only.
        """
        n_targets = sum(b.n_targets for b in group)
        weight = 1.0 / max(n_targets, 1)
        if self.world_size > 1:
            all_targets = int(distributed.all_sum([n_targets], self.hardware.device)[0])
            weight = self.world_size / max(all_targets, 1)
        scaler = self.training.scaler
        step_loss = torch.zeros((), device=self.hardware.device)
        for k, batch in enumerate(group):
            syncing = self.world_size == 1 or k == len(group) - 1
            with gradient_sync(self.model, syncing):
                loss_sum = forward_loss(self.model, batch, self.hardware, self.seq2seq)
                loss = loss_sum * (0.0 if batch.filler else weight)
                (scaler.scale(loss) if scaler else loss).backward()
            if not batch.filler:
                step_loss += loss_sum.detach()
            self.window.tokens += batch.tokens
        self.window.loss += step_loss
        self.window.targets += n_targets
        # The last micro-batch's tensors live until the next step replaces them, as they did when
        # the loop was one function: freeing all of a step's tensors at once lets malloc give the
        # heap top back to the OS, and each step then page-faults its large buffers in again
        # (measured on CPU: 4x the page faults, about 10 % fewer tokens per second).
        self.last_micro_batch = (batch, loss_sum, loss, step_loss)

    def _apply_gradients(self) -> float:
        """Clip, step the optimizer and the LR schedule; returns this step's learning rate."""
        optimizer, scaler = self.training.optimizer, self.training.scaler
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
        # under FSDP the norm is a DTensor (over all shards): the plain number, once per step
        self.grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        learning_rate = optimizer.param_groups[0]["lr"]
        self.training.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return learning_rate

    # events ---------------------------------------------------------------------------
    def _open_window(self, started: float) -> ProgressWindow:
        return ProgressWindow(started=started, loss=torch.zeros((), device=self.hardware.device))

    def _report_progress(self, learning_rate: float) -> None:
        window, tracker, step = self.window, self.tracker, self.training.step
        if self.world_size > 1:  # the figures of all processes: loss over all targets, tokens of all
            loss, targets, tokens = distributed.all_sum(
                [window.loss, window.targets, window.tokens], self.hardware.device
            ).tolist()
            window.loss, window.targets, window.tokens = torch.tensor(loss), int(targets), int(tokens)
        loss_value = float(window.loss) / window.targets if window.targets else None
        if loss_value is not None and not math.isfinite(loss_value):
            raise TrainingError(
                f"the training loss became {loss_value} at step {step}: lower the learning rate "
                "or check the data"
            )
        now = tracker.train_time()
        elapsed = max(now - window.started, 1e-9)
        tracker.train_tokens += window.tokens
        if loss_value is not None:
            tracker.loss_sum += float(window.loss)
            tracker.loss_count += window.targets
        record = {
            "step": step,
            "epoch": self.schedule.epoch_at(step),
            "loss": loss_value,
            "learning_rate": learning_rate,
            "grad_norm": finite(float(self.grad_norm)),
            "tokens_per_second": round(window.tokens / elapsed, 1),
        }
        tracker.log_history.append({"event": "progress", **record})
        total_steps = self.schedule.total_steps
        emit(
            "progress",
            total_steps=total_steps,
            eta_seconds=round(now / step * (total_steps - step), 1),
            **record,
        )
        self.window = self._open_window(now)

    def _evaluate_and_report(self) -> float | None:
        with self.tracker.excluding():
            loss = self._evaluate()
        if self._stopped():
            return None
        step = self.training.step
        record = {"step": step, "epoch": self.schedule.epoch_at(step), "eval_loss": loss}
        self.tracker.log_history.append({"event": "eval", **record})
        emit(
            "eval",
            step=step,
            total_steps=self.schedule.total_steps,
            epoch=record["epoch"],
            eval_loss=loss,
            perplexity=perplexity(loss),
        )
        return loss

    @phases.timed_evaluation
    def _evaluate(self) -> float | None:
        """The mean loss per target over the validation data; None when a stop signal cut it short.

        Each process evaluates its share; the sums are added up over the processes.
        """
        model = self.training.model  # no DDP wrapper: nothing to synchronise in a forward pass
        model.eval()
        loss_sum = torch.zeros((), device=self.hardware.device)
        count = 0
        # no_grad, not inference_mode (nor in evaluation.py, outputs.py): FSDP's weights gathered in
        # inference mode would be inference tensors that training can no longer update.
        with torch.no_grad():
            for batch in eval_batches(
                self.datasets.eval,
                self.schedule.batch_size,
                self.hardware.pad_multiple,
                self.rank,
                self.world_size,
            ):
                if self._stopped():
                    model.train()
                    return None
                loss = forward_loss(model, batch, self.hardware, self.seq2seq)
                if not batch.filler:  # a filler only keeps FSDP's processes in step
                    loss_sum += loss
                    count += batch.n_targets
        model.train()
        if self.world_size > 1:
            loss_sum, count = distributed.all_sum([loss_sum, count], self.hardware.device).tolist()
        return finite(float(loss_sum) / count) if count else None

    def _save_checkpoint(self) -> None:
        with self.tracker.excluding():
            # Rank 0 writes it; the others wait, so none runs ahead of a checkpoint that could be
            # resumed from. Under DDP every process holds the same weights and optimizer state; under
            # FSDP each holds a shard, and all gather the full ones for rank 0 first.
            sharded = is_sharded(self.training.model)
            weights = optimizer_state = None
            if sharded or distributed.is_main():
                weights = gathered_weights(self.training.model)
                optimizer_state = gathered_optimizer_state(self.training)
            path = (
                save_checkpoint(
                    self.training,
                    self.tokenizer,
                    self.checkpoint_dir,
                    self.run_fingerprint,
                    weights=weights,
                    optimizer_state=optimizer_state,
                )
                if distributed.is_main()
                else None
            )
            distributed.barrier()
        self.last_checkpoint = time.monotonic()
        self.checkpointed_step = self.training.step
        emit("checkpoint", step=self.training.step, path=path)
