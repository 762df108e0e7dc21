"""Local backend: run finetune.py in a subprocess, the way a SageMaker container would.

The worker lays out the SM_* folders in a temp dir, copies the prepared dataset
in (and the chain's last checkpoint, and a continued job's starting model), runs
the script in its own process group, turns each stdout line into a lifecycle
event, writes a heartbeat, watches for a stop request, stores each new checkpoint
as it comes, and finally uploads the model folder to storage under the owner's prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings

from jobs import artifacts, checkpoints, lifecycle, memory, queueing
from jobs.estimate import format_duration
from jobs.models import FINAL_STATES, JobStatus, TrainingJob
from llmtuner import scratch, storage
from llmtuner.redact import redact

logger = logging.getLogger(__name__)
SCRIPT = Path(settings.BASE_DIR) / "training_scripts" / "finetune.py"
HEARTBEAT_SECONDS = 2.0
LOG_FLUSH_SECONDS = 1.0
STOP_GRACE_SECONDS = 15.0
# Variables the script may see; everything else in the worker's environment
# (database URLs, AWS keys, the Django secret) stays out of its reach.
PASSED_ENVIRONMENT = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "HF_HOME",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "PYTHONPATH",
)


def script_arguments(hyperparameters: dict) -> list[str]:
    """Hyperparameters as SageMaker passes them: `--name <json value>`."""
    arguments = []
    for name, value in hyperparameters.items():
        arguments += [f"--{name}", json.dumps(value)]
    return arguments


def training_processes() -> int:
    """How many processes a job trains with: LOCAL_TRAINING_GPUS, else the GPUs `nvidia-smi -L` lists."""
    configured = int(settings.LOCAL_TRAINING_GPUS or 0)
    return configured if configured > 0 else count_gpus()


def count_gpus() -> int:
    """The worker's NVIDIA GPUs (0 without a driver): asked of nvidia-smi, so the worker loads no torch."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return 0
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        logger.warning("nvidia-smi -L failed: training on one process", exc_info=True)
        return 0
    if listing.returncode != 0:
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def training_command(hyperparameters: dict, processes: int) -> list[str]:
    """`python finetune.py …`, or with several GPUs torchrun starting one process per GPU (contract C5)."""
    script = [str(SCRIPT), *script_arguments(hyperparameters)]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        return [sys.executable, "-u", *launcher, *script]
    return [sys.executable, "-u", *script]


def run_job(job_id: int, token_id: str | None = None) -> None:
    """Run the fairest queued local job; the task's `job_id` is a token for a place in the queue."""
    claimed = _claim(job_id, token_id)
    if claimed is None:
        return
    job = TrainingJob.objects.select_related("dataset", "base_model").get(pk=claimed)
    with scratch.task_folder(f"job-{claimed}-") as workdir:
        LocalRun(job, workdir).run()


def _claim(job_id: int, token_id: str | None) -> int | None:
    # None: nothing waits (its job was stopped while queued, or another worker took it).
    return queueing.claim_next_local_job(job_id, token_id)


class LocalRun:
    def __init__(self, job: TrainingJob, workdir: Path) -> None:
        self.job = job
        self.workdir = workdir
        self.log_path = workdir / "train.log"
        self.pending_log: list[str] = []
        self.last_log_flush = 0.0
        self.last_heartbeat = 0.0
        self.stop_sent_at: float | None = None
        self.saw_done = False
        self.last_error: str | None = None
        self.stopped_event: dict | None = None  # the script's `stopped` event: its step, model_saved
        self.started = time.monotonic()
        self.capped = False  # stopped by MAX_JOB_RUNTIME_SECONDS

    def run(self) -> None:
        job = self.job
        try:
            folders = self._lay_out()
        except Exception as error:
            self._finish_failed(f"Could not prepare the training data: {error}")
            return
        try:
            self._fetch_starting_point(folders)
        except (artifacts.ModelArtifactsError, *storage.STORAGE_ERRORS, ValueError) as error:
            self._finish_failed(f"Could not fetch what this job starts from: {error}")
            return
        uploader = CheckpointUploader(job, folders["checkpoints"])
        processes = training_processes()
        over = f" on {processes} GPUs (torchrun)" if processes > 1 else ""
        self._log(f"Running finetune.py for {job.base_model.hub_id} ({job.method}){over}")
        process = subprocess.Popen(
            training_command(self._script_hyperparameters(processes), processes),
            cwd=self.workdir,
            env=self._environment(folders),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent_in_new_session,  # noqa: PLW1509 - Linux-only worker
        )
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        readers = [
            threading.Thread(target=_pump, args=(process.stdout, "out", lines), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, "err", lines), daemon=True),
        ]
        for reader in readers:
            reader.start()
        open_streams = 2
        while open_streams:
            try:
                stream, line = lines.get(timeout=0.5)
            except queue.Empty:
                stream, line = None, None
            if stream is not None and line is None:
                open_streams -= 1
            elif line is not None and self._handle_line(stream, line) == "checkpoint":
                uploader.request()
            self._tick(process)
            for message in uploader.messages():
                self._log(message)
        returncode = process.wait()
        uploader.finish()  # the stop's last checkpoint too, before the job is seen as ended
        for message in uploader.messages():
            self._log(message)
        self._flush_log()
        self._finish(returncode, folders)

    def _script_hyperparameters(self, processes: int) -> dict:
        """The job's hyperparameters with ``sharding`` resolved for this machine's GPUs."""
        gpu_memory = float(settings.LOCAL_GPU_MEMORY_GIB or 0)
        return memory.with_sharding(self.job.hyperparameters, self.job.base_model, gpu_memory, processes)

    def _lay_out(self) -> dict[str, Path]:
        folders = {
            name: self.workdir / name for name in ("train", "validation", "model", "output", "checkpoints")
        }
        for folder in folders.values():
            folder.mkdir()
        dataset = self.job.dataset
        if dataset is None:
            raise ValueError("the dataset was deleted")
        if not dataset.is_ready:
            raise ValueError(f"the dataset is {dataset.get_status_display().lower()}, not ready")
        _copy_from_storage(dataset.train_file, folders["train"] / "train.jsonl")
        if dataset.validation_file:
            _copy_from_storage(dataset.validation_file, folders["validation"] / "validation.jsonl")
        return folders

    def _fetch_starting_point(self, folders: dict[str, Path]) -> None:
        """The chain's last checkpoint into the checkpoint folder (the script resumes from it by
        itself), and for a continued job the tuned model it starts from (SM_CHANNEL_INIT_MODEL)."""
        job = self.job
        step = checkpoints.download_latest(job, folders["checkpoints"])
        if step is not None:
            self._log(f"Resuming from the checkpoint at step {step}")
        source = job.continued_from
        if source is not None:
            folders["init_model"] = artifacts.fetch(source, self.workdir / "init_model")
            self._log(f"Starting from the tuned model of “{source.name}” (job {source.pk})")

    def _environment(self, folders: dict[str, Path]) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
        env.update(
            SM_CHANNEL_TRAIN=str(folders["train"]),
            SM_MODEL_DIR=str(folders["model"]),
            SM_OUTPUT_DATA_DIR=str(folders["output"]),
            SM_CHECKPOINT_DIR=str(folders["checkpoints"]),
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
        )
        if "init_model" in folders:
            env["SM_CHANNEL_INIT_MODEL"] = str(folders["init_model"])
        validation = folders["validation"] / "validation.jsonl"
        if validation.exists() and validation.stat().st_size > 0:
            env["SM_CHANNEL_VALIDATION"] = str(folders["validation"])
        return env

    def _handle_line(self, stream: str, line: str) -> str | None:
        """Log the line, and apply it when it is an event; returns the event's kind."""
        event = _parse_event(line) if stream == "out" else None
        if event is None:
            self._log(line)
            return None
        if event["event"] == "done":
            self.saw_done = True
        if event["event"] == "error":
            # The job ends failed with it once the script has exited (_finish), not before:
            # the checkpoint it may have left is stored first, so a Retry at once resumes from it.
            self.last_error = str(event.get("message") or "")
        else:
            if event["event"] == "stopped":
                self.stopped_event = event
            lifecycle.record_event(self.job.pk, event)
        self._log(lifecycle.describe_event(event))
        return event["event"]

    def _tick(self, process: subprocess.Popen) -> None:
        now = time.monotonic()
        if now - self.last_log_flush >= LOG_FLUSH_SECONDS:
            self._flush_log()
        if now - self.last_heartbeat >= HEARTBEAT_SECONDS:
            self.last_heartbeat = now
            lifecycle.heartbeat(self.job.pk)
            if not self.capped and now - self.started >= settings.MAX_JOB_RUNTIME_SECONDS:
                self._stop_at_the_runtime_cap()
            status = TrainingJob.objects.filter(pk=self.job.pk).values_list("status", flat=True).first()
            if self.stop_sent_at is None and _should_stop(status):
                self._log(_stop_reason(status))
                _signal_group(process, signal.SIGTERM)
                self.stop_sent_at = now
        if self.stop_sent_at is not None and now - self.stop_sent_at > STOP_GRACE_SECONDS:
            if process.poll() is None:
                self._log("The script did not stop in time; killing it")
                _signal_group(process, signal.SIGKILL)
            self.stop_sent_at = float("inf")

    def _finish(self, returncode: int, folders: dict[str, Path]) -> None:
        job_id = self.job.pk
        status = TrainingJob.objects.filter(pk=job_id).values_list("status", flat=True).first()
        if status is None:
            return
        if status in FINAL_STATES:
            # Ended meanwhile by someone else (the reaper): its end is recorded already.
            self._flush_log()
            self._store_log()
            return
        if status == JobStatus.STOPPING:
            message, saved = self._keep_the_model_so_far(folders)
            self._log(message)
            self._flush_log()
            self._store_log()
            lifecycle.transition(job_id, JobStatus.STOPPED, message, **saved)
            return
        if returncode != 0 or not self.saw_done:
            self._store_log()
            message = self.last_error or f"The training script exited with code {returncode}"
            self._finish_failed(message)
            return
        lifecycle.transition(job_id, JobStatus.UPLOADING, "Saving the tuned model")
        try:
            prefix = f"{self.job.storage_prefix()}/model"
            _upload_folder(folders["model"], prefix)
            _upload_folder(folders["output"], f"{self.job.storage_prefix()}/output")
        except Exception as error:
            self._store_log()
            self._finish_failed(f"Could not save the tuned model to storage: {error}")
            return
        self._log("Model saved")
        self._flush_log()
        self._store_log()
        lifecycle.transition(job_id, JobStatus.COMPLETED, "Completed", model_prefix=prefix)

    def _stop_at_the_runtime_cap(self) -> None:
        # As SageMaker's MaxRuntime: the script gets SIGTERM (on the next tick) and saves its model.
        self.capped = True
        cap = format_duration(settings.MAX_JOB_RUNTIME_SECONDS)
        message = f"Reached the {cap} a job may run on this machine: stopping, and keeping the model so far"
        if lifecycle.transition(self.job.pk, JobStatus.STOPPING, message):
            self._log(message)

    def _keep_the_model_so_far(self, folders: dict[str, Path]) -> tuple[str, dict]:
        """Upload what a stopped script saved: (the job's final message, the fields to set)."""
        event = self.stopped_event or {}
        step, total = event.get("step"), event.get("total_steps")
        where = f"at step {step} of {total}" if step and total else "before its first step"
        cap = format_duration(settings.MAX_JOB_RUNTIME_SECONDS)
        cause = f"Stopped at the {cap} a job may run on this machine, " if self.capped else "Stopped "
        model_files = folders["model"].exists() and any(p.is_file() for p in folders["model"].rglob("*"))
        if not (event.get("model_saved") and model_files):
            return f"{cause}{where}: no model was saved (it is saved once a step has run).", {}
        prefix = f"{self.job.storage_prefix()}/model"
        try:
            _upload_folder(folders["model"], prefix)
            _upload_folder(folders["output"], f"{self.job.storage_prefix()}/output")
        except Exception as error:
            return f"{cause}{where}, but the model so far could not be saved to storage: {error}", {}
        return f"{cause}{where}; the model so far is saved.", {"model_prefix": prefix}

    def _finish_failed(self, message: str) -> None:
        self._log(message)
        self._flush_log()
        lifecycle.transition(self.job.pk, JobStatus.FAILED, message)

    def _log(self, line: str) -> None:
        line = redact(line)  # the full log is kept in storage too
        self.pending_log.append(line)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(line.rstrip("\n") + "\n")

    def _flush_log(self) -> None:
        self.last_log_flush = time.monotonic()
        if self.pending_log:
            lines, self.pending_log = self.pending_log, []
            lifecycle.append_log(self.job.pk, lines)

    def _store_log(self) -> None:
        key = f"{self.job.storage_prefix()}/logs/train.log"
        try:
            storage.delete([key])
            stored = storage.save_path(key, self.log_path)
        except Exception:
            logger.exception("could not store the log of job %s", self.job.pk)
            return
        TrainingJob.objects.filter(pk=self.job.pk).update(log_key=stored)


class CheckpointUploader:
    """Stores the run's newest checkpoint while it trains, in a thread of its own, so that a large
    upload never holds up the heartbeats; `finish` stores the last one once the script has ended."""

    def __init__(self, job: TrainingJob, folder: Path) -> None:
        self.job, self.folder = job, folder
        self.said: queue.SimpleQueue[str] = queue.SimpleQueue()  # log lines, for the run's thread
        self.wanted = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"checkpoints-{job.pk}", daemon=True)
        self.thread.start()

    def messages(self) -> list[str]:
        lines = []
        while not self.said.empty():
            lines.append(self.said.get())
        return lines

    def request(self) -> None:
        self.wanted.set()

    def finish(self) -> None:
        self.done.set()
        self.wanted.set()
        self.thread.join()
        self._store()

    def _loop(self) -> None:
        while not self.done.is_set():
            self.wanted.wait()
            self.wanted.clear()
            if not self.done.is_set():
                self._store()

    def _store(self) -> None:
        try:
            step = checkpoints.upload_latest(self.job, self.folder)
        except storage.STORAGE_ERRORS as error:
            logger.exception("job %s: could not store its checkpoint", self.job.pk)
            self.said.put(f"Could not store the latest checkpoint ({storage.describe(error)})")
            return
        if step is not None:
            self.said.put(f"Checkpoint at step {step} stored: the job can resume from it")


def _should_stop(status: str | None) -> bool:
    # Stopping, deleted, or already ended elsewhere (the reaper ends a job whose heartbeats went
    # stale while its worker still lives): either way nobody wants this script to train on.
    return status is None or status == JobStatus.STOPPING or status in FINAL_STATES


def _stop_reason(status: str | None) -> str:
    if status == JobStatus.STOPPING:
        return "Stop requested: asking the training script to stop"
    if status is None:
        return "The job was deleted: stopping the training script"
    return f"The job was marked {status} meanwhile: stopping the training script"


def _parse_event(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def _pump(stream, name: str, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put((name, raw.decode("utf-8", errors="replace").rstrip("\n")))
    lines.put((name, None))


def _die_with_parent_in_new_session() -> None:
    os.setsid()
    # If the worker is killed (even with SIGKILL), the kernel kills the script too,
    # so no orphaned training keeps running after the reaper failed the job.
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _copy_from_storage(key: str, destination: Path) -> None:
    with storage.open_stream(key) as source, open(destination, "wb") as target:
        shutil.copyfileobj(source, target, length=1024 * 1024)


def _upload_folder(folder: Path, prefix: str) -> None:
    # A retried upload replaces what an interrupted one left.
    storage.delete_prefix(f"{prefix}/")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.save_path(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
