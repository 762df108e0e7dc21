"""Training engine behind finetune.py: the phases of a run, in order.

load data → load model → tokenise → schedule → train → save → sample generations. Each
phase lives in its own sibling module; this file only calls them. They import torch /
transformers / peft, so only finetune.py imports this (after the arguments were validated);
the Django web process never does.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import warnings

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import distributed  # noqa: E402
import hyperparameters as hp  # noqa: E402
import phases  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from batching import Datasets, build_datasets  # noqa: E402
from data import Corpus, load_corpus  # noqa: E402
from evaluation import BaseAnswers, base_before_training, data_format, evaluate, summary, wanted  # noqa: E402
from hardware import Hardware, pick_hardware  # noqa: E402
from loop import Trainer  # noqa: E402
from modelling import LoadedModel, load_model, merged_adapter_model, shard_for_processes, uses_fsdp  # noqa: E402
from outputs import generate_samples, save_model, write_hyperparameters, write_json  # noqa: E402
from reporting import TrainingError, emit, finite, perplexity  # noqa: E402
from schedule import Schedule, plan_schedule, used_hyperparameters  # noqa: E402
from tokenization import Encoder, keep_training_format  # noqa: E402
from training_state import (  # noqa: E402
    TrainingState,
    gathered_weights,
    resume_from_latest,
    run_fingerprint,
    start_training,
)

transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)


def run(hparams: dict, paths: dict, state) -> int:
    """Train, save and sample; returns the exit status. ``state`` is finetune.RunState (signals)."""
    try:
        return _run(hparams, paths, state)
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(
            f"out of GPU memory ({str(exc).splitlines()[0]}): lower batch_size or max_seq_length (raise "
            "gradient_accumulation_steps to keep the effective batch), turn on gradient_checkpointing, use "
            "method lora or qlora, or pick an instance with more GPU memory (or more GPUs)"
        ) from exc
    finally:
        distributed.shutdown()


def _run(hparams: dict, paths: dict, state) -> int:
    random.seed(hparams["seed"])
    transformers.set_seed(hparams["seed"])
    hardware = pick_hardware(hparams["precision"])
    distributed.init(hardware.device.type)
    model_dir, output_dir = paths["model_dir"], paths["output_dir"]
    state.model_dir = model_dir

    phases.start("preparing_data")
    corpus = load_corpus(paths, hparams)
    phases.start("loading_model")
    loaded = load_model(hparams, corpus, hardware, init_model_dir=paths.get("init_model_dir"))
    phases.start("preparing_data")  # tokenising needs the model's tokenizer
    encoder = Encoder(loaded.tokenizer, loaded.seq2seq, loaded.max_len)
    datasets = build_datasets(encoder, corpus, hparams["packing"], loaded.pad_id, loaded.decoder_start_id)
    schedule = plan_schedule(hparams, len(datasets.train), distributed.world_size())
    state.total_steps = schedule.total_steps
    if distributed.is_main():
        write_hyperparameters(model_dir, output_dir, used_hyperparameters(hparams, schedule, loaded.max_len))
    sharded = uses_fsdp(hparams)
    if sharded:  # before the optimizer is made: it holds the shards
        shard_for_processes(loaded.model, hardware)
    # Under FSDP every forward pass is a collective, so every process must run the same ones: a stop
    # is acted on once all processes agreed on it, never by one alone.
    stop = agreed_stop(state, hardware) if sharded else state.stop_requested
    training = start_training(loaded.model, hparams, schedule, hardware)
    fingerprint = run_fingerprint(hparams, schedule, len(datasets.train), len(loaded.tokenizer))
    resumed_from_step = resume_from_latest(
        training, paths["checkpoint_dir"], fingerprint, schedule.total_steps
    )
    state.step = training.step
    report_start(hparams, corpus, loaded, datasets, schedule, hardware, resumed_from_step)
    base = base_answers(training, encoder, corpus, datasets, hparams, hardware, stop, resumed_from_step)

    state.phase = "train"
    phases.start("training")
    trainer = Trainer(
        training,
        datasets,
        schedule,
        hardware,
        hparams,
        state,
        seq2seq=loaded.seq2seq,
        tokenizer=loaded.tokenizer,
        checkpoint_dir=paths["checkpoint_dir"],
        run_fingerprint=fingerprint,
    )
    trainer.train()

    evaluated = None
    if not stop():  # before the save: a merge leaves no adapters to disable
        evaluated = evaluate(
            training.model, base, encoder, corpus, datasets, hparams, hardware, training.eval_loss, stop
        )
    state.phase = "save"
    keep_training_format(encoder, evaluated["data_format"] if evaluated else data_format(corpus))
    phases.start("saving")
    weights = gathered_weights(training.model)  # FSDP: all gather the full weights for rank 0
    if distributed.is_main():  # every process holds the same model: one saves it, the others wait
        state.model_saved = save_trained_model(training, loaded.tokenizer, hparams, model_dir, weights)
    del weights
    distributed.barrier()
    stopped = stop()  # also true for a signal that came during the save
    if not distributed.is_main():
        if sharded and not stopped:  # rank 0's sample generations are collectives: take part
            generate_samples(training.model, encoder, corpus.eval + corpus.train, hparams, hardware)
        return 128 + int(state.stop_signal) if stopped else 0
    metrics = final_metrics(stopped, training, hparams, corpus, loaded, schedule, hardware, resumed_from_step)
    metrics["evaluation"] = summary(evaluated)
    write_json(os.path.join(model_dir, "metrics.json"), metrics)
    if evaluated and not stopped:
        write_json(os.path.join(model_dir, "evaluation.json"), evaluated)
    if stopped:
        report_stopped(state, training.step, schedule.total_steps, model_dir)
        return 128 + int(state.stop_signal)

    state.phase = "samples"
    phases.start("generating_samples")
    samples_path = os.path.join(output_dir, "samples.json")
    generations = generate_samples(training.model, encoder, corpus.eval + corpus.train, hparams, hardware)
    write_json(samples_path, generations)
    write_json(os.path.join(model_dir, "samples.json"), generations)  # so it reaches the download (C6)
    report_done(metrics, model_dir, output_dir, samples_path)
    return 0


def agreed_stop(state, hardware):
    """``state.stop_requested`` agreed by all processes: true on every one once any got a signal."""

    def stop() -> bool:
        signal_anywhere = distributed.all_max([float(state.stop_signal or 0)], hardware.device)[0]
        if signal_anywhere and not state.stop_signal:
            state.stop_signal = int(signal_anywhere)
        return bool(signal_anywhere)

    return stop


def base_answers(training, encoder, corpus, datasets, hparams, hardware, stop, resumed_from_step):
    """The base model's answers for the evaluation: kept in the checkpoints (the tracker), so a resumed
    run scores against the base it started from, not against its checkpoint. Every process computes
    them (the same answers): none waits alone at a collective meanwhile."""
    if resumed_from_step:
        kept = training.tracker.base_evaluation
        return BaseAnswers(**kept) if kept else None
    if hparams["method"] not in hp.ADAPTER_METHODS and wanted(corpus, hparams):
        phases.start("evaluating")  # the base's answers, before training changes its weights
    base = base_before_training(training.model, encoder, corpus, datasets, hparams, hardware, stop)
    training.tracker.base_evaluation = dataclasses.asdict(base) if base else None
    return base


def save_trained_model(
    training: TrainingState, tokenizer, hparams: dict, model_dir: str, weights: dict | None = None
) -> bool:
    """Save the model reached (none before the first step); True when saved. ``weights``: an FSDP
    model's, gathered."""
    training.model.eval()
    if training.step == 0:
        return False
    merge = hparams["method"] in ("lora", "qlora") and hparams["merge_adapter"]
    keep_adapter = merge and not hp.is_scratch_model(hparams["base_model"])  # scratch: no base to load
    model = training.model
    if merge and hparams["method"] == "qlora":
        model = merged_adapter_model(model, hparams)  # the adapter onto the base in bf16, not 4-bit
    training.model = save_model(model, tokenizer, merge, model_dir, keep_adapter, weights=weights)
    return True


def final_metrics(
    stopped: bool,
    training: TrainingState,
    hparams: dict,
    corpus: Corpus,
    loaded: LoadedModel,
    schedule: Schedule,
    hardware: Hardware,
    resumed_from_step: int,
) -> dict:
    """metrics.json: the figures of the run and its log history."""
    tracker = training.tracker
    return {
        "status": "stopped" if stopped else "completed",
        "step": training.step,
        "total_steps": schedule.total_steps,
        "epoch": schedule.epoch_at(training.step),
        "train_loss": finite(tracker.train_loss()),
        "final_loss": next(
            (r["loss"] for r in reversed(tracker.log_history) if r["event"] == "progress"), None
        ),
        "eval_loss": training.eval_loss,
        "perplexity": perplexity(training.eval_loss),
        "train_runtime": round(tracker.runtime, 3),
        "train_cpu_seconds": round(tracker.cpu_seconds, 3),  # CPU time of this process (all threads)
        "train_tokens": tracker.train_tokens,
        "tokens_per_second": round(tracker.train_tokens / max(tracker.runtime, 1e-9), 1),
        "samples": len(corpus.train),
        "eval_samples": len(corpus.eval),
        "total_parameters": loaded.total_parameters,
        "trainable_parameters": loaded.trainable_parameters,
        "device": str(hardware.device),
        "peak_memory_bytes": hardware.peak_memory_bytes(),  # per device (rank 0's)
        "precision": hardware.precision,
        "method": hparams["method"],
        "seq2seq": loaded.seq2seq,
        "lora_target_modules": loaded.lora_targets,
        "adapter_merged": bool(hparams["method"] in ("lora", "qlora") and hparams["merge_adapter"]),
        "adapter_saved": hparams["method"] in ("lora", "qlora")
        and not hp.is_scratch_model(hparams["base_model"]),
        "world_size": distributed.world_size(),
        "sharding": sharding_of(hparams),
        "resumed_from_step": resumed_from_step,
        "log_history": tracker.log_history,
    }


def report_start(
    hparams: dict,
    corpus: Corpus,
    loaded: LoadedModel,
    datasets: Datasets,
    schedule: Schedule,
    hardware: Hardware,
    resumed_from_step: int,
) -> None:
    emit(
        "start",
        total_steps=schedule.total_steps,
        epochs=round(schedule.total_steps / schedule.steps_per_epoch, 4),
        samples=len(corpus.train),
        eval_samples=len(corpus.eval),
        tokens=datasets.train.tokens,
        total_parameters=loaded.total_parameters,
        trainable_parameters=loaded.trainable_parameters,
        device=hardware.describe(),
        precision=hardware.precision,
        world_size=distributed.world_size(),
        sharding=sharding_of(hparams),
        # examples per optimizer step: per process x accumulation x processes
        effective_batch_size=schedule.batch_size
        * schedule.gradient_accumulation_steps
        * distributed.world_size(),
        method=hparams["method"],
        base_model=hparams["base_model"],
        max_seq_length=loaded.max_len,
        seq2seq=loaded.seq2seq,
        packing=bool(hparams["packing"] and not loaded.seq2seq),
        lora_target_modules=loaded.lora_targets,
        learning_rate=hparams["learning_rate"],
        resumed_from_step=resumed_from_step,
    )


def report_stopped(state, step: int, total_steps: int, model_dir: str) -> None:
    emit(
        "stopped",
        step=step,
        total_steps=total_steps,
        reason=signal_name(state.stop_signal),
        model_saved=state.model_saved,
        model_dir=model_dir if state.model_saved else None,
    )


def report_done(metrics: dict, model_dir: str, output_dir: str, samples_path: str) -> None:
    emit(
        "done",
        step=metrics["step"],
        total_steps=metrics["total_steps"],
        epoch=metrics["epoch"],
        train_loss=metrics["train_loss"],
        eval_loss=metrics["eval_loss"],
        perplexity=metrics["perplexity"],
        train_runtime=metrics["train_runtime"],
        train_tokens=metrics["train_tokens"],
        tokens_per_second=metrics["tokens_per_second"],
        model_dir=model_dir,
        output_dir=output_dir,
        final_loss=metrics["final_loss"],
        samples_path=samples_path,
        phase_seconds=phases.seconds(),
        evaluations=phases.evaluations(),
        adapter_merged=metrics["adapter_merged"],
        adapter_saved=metrics["adapter_saved"],
        evaluation=metrics["evaluation"],
    )


def sharding_of(hparams: dict) -> str:
    """How the processes share the training: fsdp, ddp, or none (one process)."""
    if not distributed.is_distributed():
        return "none"
    return "fsdp" if uses_fsdp(hparams) else "ddp"


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return str(signum)
