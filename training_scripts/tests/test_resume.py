"""Resume from checkpoints and continue training (issue 14, item 2, the script's side).

A run that dies goes on from its newest complete checkpoint when started again with the same
arguments, as if it had never stopped; a stop signal leaves a checkpoint and the model; a saved
model (folder, adapter or model.tar.gz) is a starting point for a new run. Tiny models only.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from training_scripts.hyperparameters import DEFAULTS, validate_hyperparameters
from training_scripts.tests.helpers import (
    FAST,
    SCRIPT,
    TEXT_ROWS,
    assert_completed,
    base_env,
    parse_stdout,
    run_finetune,
    train_tokenizer,
    write_jsonl,
)


def run_args(tmp_path: Path, name: str, *extra) -> list:
    train = write_jsonl(tmp_path / "data/train.jsonl", TEXT_ROWS).parent
    folder = tmp_path / name
    return [
        *("--train_dir", train, "--model_dir", folder / "model", "--output_dir", folder / "out"),
        *("--checkpoint_dir", folder / "ckpt", *FAST, "--validation_split", "0"),
        *("--num_sample_generations", "0", "--learning_rate", "3e-3", *extra),
    ]


def run_until(args: list, signum: int, should_signal) -> tuple[int, list[dict], float]:
    """Run finetune.py, send ``signum`` once ``should_signal(events so far)``; (exit code, events, seconds
    from the signal to the exit)."""
    command = [sys.executable, str(SCRIPT), *[str(a) for a in args]]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=base_env()
    )
    lines: list[str] = []
    signalled = None
    try:
        for line in proc.stdout:
            lines.append(line)
            if should_signal(parse_stdout("".join(lines))):
                proc.send_signal(signum)
                signalled = time.monotonic()
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert signalled is not None, "the run ended before it was signalled"
    return proc.returncode, parse_stdout("".join(lines)), time.monotonic() - signalled


def losses_by_step(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "progress"}


def history_steps(model_dir: Path) -> list[int]:
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return [r["step"] for r in metrics["log_history"] if r["event"] == "progress"]


# ----------------------------------------------------------------------------- resume, end to end


@pytest.mark.slow
def test_a_killed_run_started_again_goes_on_from_its_last_checkpoint_as_if_never_stopped(tmp_path):
    steps, every = 120, 10
    whole = run_finetune(
        run_args(tmp_path, "whole", "--max_steps", steps, "--save_steps", every), cwd=tmp_path
    )
    assert_completed(whole)

    killed_args = run_args(tmp_path, "killed", "--max_steps", steps, "--save_steps", every)
    code, events, _ = run_until(
        killed_args,
        signal.SIGKILL,
        lambda seen: any(e["event"] == "checkpoint" and e["step"] >= 2 * every for e in seen),
    )
    assert code == -signal.SIGKILL and not [e for e in events if e["event"] in ("done", "stopped")]
    last_trained = max(losses_by_step(events))
    assert last_trained < steps

    # Half-written or damaged checkpoints beside the real ones, newer than them: never used.
    ckpt = tmp_path / "killed/ckpt"
    newest = max(ckpt.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    shutil.copytree(newest, ckpt / "checkpoint-1000.tmp")  # complete, but not renamed into place
    shutil.copytree(newest, ckpt / "checkpoint-1001")
    (ckpt / "checkpoint-1001/state.json").unlink()  # killed before its state.json
    shutil.copytree(newest, ckpt / "checkpoint-1002")
    with open(ckpt / "checkpoint-1002/model.safetensors", "r+b") as fh:
        fh.truncate(100)  # copied back in part
    # A checkpoint holds no absolute path: it goes on from wherever it was moved to.
    for file in newest.iterdir():
        if file.suffix == ".json":
            assert str(tmp_path) not in file.read_text(), file
    moved = tmp_path / "moved-ckpt"
    shutil.move(ckpt, moved)

    resumed = run_finetune([*killed_args, "--checkpoint_dir", moved], cwd=tmp_path)

    assert_completed(resumed)
    resumed_from = resumed.one("start")["resumed_from_step"]
    assert resumed_from == int(newest.name.rsplit("-", 1)[1]) and resumed_from % every == 0
    assert 0 <= last_trained - resumed_from < every  # steps lost: at most those since the last checkpoint
    assert f"resuming from checkpoint-{resumed_from}" in resumed.stderr
    after = losses_by_step(resumed.events)
    assert sorted(after) == list(range(resumed_from + 1, steps + 1))  # no step twice, none left out
    expected = losses_by_step(whole.events)
    for step, loss in after.items():
        assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    # metrics.json and its log history are those of one run
    assert history_steps(tmp_path / "killed/model") == list(range(1, steps + 1))
    metrics = json.loads((tmp_path / "killed/model/metrics.json").read_text())
    whole_metrics = json.loads((tmp_path / "whole/model/metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(whole_metrics["train_loss"], rel=1e-4)
    assert metrics["train_tokens"] == whole_metrics["train_tokens"]
    assert metrics["resumed_from_step"] == resumed_from and whole_metrics["resumed_from_step"] == 0
    assert whole.one("start")["resumed_from_step"] == 0
    # the newest two complete checkpoints are kept; the leftovers are gone
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoint-100", "checkpoint-110"]


@pytest.mark.slow
def test_a_stop_signal_leaves_a_checkpoint_and_the_model_and_the_next_attempt_ends_the_run(
    tmp_path, tiny_llama
):
    lora = ("--base_model", tiny_llama, "--method", "lora", "--lora_r", "8", "--learning_rate", "2e-2")
    steps = 80
    whole = run_finetune(run_args(tmp_path, "whole", *lora, "--max_steps", steps), cwd=tmp_path)
    assert_completed(whole)

    args = run_args(tmp_path, "stopped", *lora, "--max_steps", steps)
    code, events, seconds = run_until(
        args, signal.SIGTERM, lambda seen: any(e["event"] == "progress" for e in seen)
    )

    assert code == 128 + signal.SIGTERM
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "SIGTERM" and stopped["model_saved"] is True
    assert 1 <= stopped["step"] < steps
    checkpoint = [e for e in events if e["event"] == "checkpoint"]
    assert [e["step"] for e in checkpoint] == [stopped["step"]]
    assert (Path(checkpoint[0]["path"]) / "adapter_model.safetensors").exists()
    assert (tmp_path / "stopped/model/model.safetensors").exists()  # the model so far, merged
    assert seconds < 120  # SageMaker's window between SIGTERM and SIGKILL

    resumed = run_finetune(args, cwd=tmp_path)

    assert_completed(resumed)
    assert resumed.one("start")["resumed_from_step"] == stopped["step"]
    after, expected = losses_by_step(resumed.events), losses_by_step(whole.events)
    assert sorted(after) == list(range(stopped["step"] + 1, steps + 1))
    for step, loss in after.items():
        assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    assert history_steps(tmp_path / "stopped/model") == list(range(1, steps + 1))


@pytest.mark.slow
def test_checkpoints_also_come_by_time(tmp_path):
    run = run_finetune(
        run_args(tmp_path, "timed", "--max_steps", "40", "--checkpoint_minutes", "0.0005"), cwd=tmp_path
    )

    assert_completed(run)
    steps = [e["step"] for e in run.of("checkpoint")]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] < 40  # about every 30 ms, none at the end
    assert len(list((tmp_path / "timed/ckpt").iterdir())) == 2


def test_checkpoint_minutes_is_validated():
    assert validate_hyperparameters({"checkpoint_minutes": "15"}) == (
        {**validate_hyperparameters({})[0], "checkpoint_minutes": 15.0},
        {},
    )
    assert DEFAULTS["checkpoint_minutes"] == 0
    errors = validate_hyperparameters({"checkpoint_minutes": "-1"})[1]
    assert errors == {"checkpoint_minutes": "must be a number between 0 and 10080 (got '-1')"}


# ----------------------------------------------------------------------------- continue training (C3)


def first_and_last_losses(run) -> tuple[float, float]:
    losses = [e["loss"] for e in run.of("progress")]
    return losses[0], losses[-1]


@pytest.mark.slow
def test_continuing_from_a_model_tar_gz_starts_at_the_first_runs_final_loss(tmp_path):
    first = run_finetune(run_args(tmp_path, "first", "--max_steps", "40"), cwd=tmp_path)
    assert_completed(first)
    channel = tmp_path / "init_model"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:  # as SageMaker leaves it in S3
        for file in (tmp_path / "first/model").iterdir():
            tar.add(file, arcname=file.name)

    env = base_env({"SM_CHANNEL_INIT_MODEL": str(channel)})
    args = run_args(tmp_path, "next", "--max_steps", "3", "--learning_rate", "1e-4", "--warmup_ratio", "0")
    continued = run_finetune(args, env=env, cwd=tmp_path)

    assert_completed(continued)
    started, ended = first_and_last_losses(first)
    resumed_at, _ = first_and_last_losses(continued)
    assert abs(resumed_at - ended) < abs(resumed_at - started) / 5, (started, ended, resumed_at)
    assert continued.one("start")["resumed_from_step"] == 0  # a new run, from the saved weights


@pytest.mark.slow
def test_continuing_an_adapter_trains_that_adapter_on_its_base_model(tmp_path, tiny_llama):
    lora = ("--base_model", tiny_llama, "--method", "lora", "--lora_r", "8", "--merge_adapter", "false")
    first = run_finetune(run_args(tmp_path, "first", *lora, "--max_steps", "30", "--learning_rate", "3e-2"))
    assert_completed(first)
    assert (tmp_path / "first/model/adapter_config.json").exists()

    continued = run_finetune(
        run_args(
            tmp_path, "next", *lora, "--max_steps", "3", "--learning_rate", "1e-4", "--warmup_ratio", "0"
        )
        + ["--init_model_dir", tmp_path / "first/model"]
    )

    assert_completed(continued)
    started, ended = first_and_last_losses(first)
    resumed_at, _ = first_and_last_losses(continued)
    assert started - ended > 0.1, (started, ended)
    assert abs(resumed_at - ended) < abs(resumed_at - started) / 3, (started, ended, resumed_at)
    start = continued.one("start")
    assert (
        start["trainable_parameters"] == first.one("start")["trainable_parameters"]
    )  # the same adapter, trainable
    assert "continuing from the adapter" in continued.stderr
    assert (tmp_path / "next/model/adapter_model.safetensors").exists()


def archive_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    folder = tmp_path / "channel"
    folder.mkdir()
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        config = tarfile.TarInfo("config.json")
        config.size = 2
        tar.addfile(config, io.BytesIO(b"{}"))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return folder


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, target
    return member


def regular(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = 4
    return member


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (regular("../outside.txt"), "points outside the archive's folder"),
        (regular("/etc/evil.txt"), "points outside the archive's folder"),
        (regular("a/../../outside.txt"), "points outside the archive's folder"),
        (link("model.safetensors", "/etc/passwd", tarfile.SYMTYPE), "is a link or a special file"),
        (link("tokenizer.json", "config.json", tarfile.LNKTYPE), "is a link or a special file"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink", "hardlink"],
)
def test_an_unsafe_model_archive_is_refused_and_nothing_is_extracted(tmp_path, member, says):
    from init_model import resolve_init_model
    from reporting import TrainingError

    folder = archive_with(tmp_path, member, b"evil")

    with pytest.raises(TrainingError) as caught:
        resolve_init_model(str(folder))

    assert f"model.tar.gz: {member.name!r} {says}" in str(caught.value)
    assert not (tmp_path / "outside.txt").exists()


def test_an_init_model_folder_without_a_model_says_what_it_expects(tmp_path):
    from init_model import resolve_init_model
    from reporting import TrainingError

    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="holds no saved model: expected config.json"):
        resolve_init_model(str(tmp_path / "empty"))
    with pytest.raises(TrainingError, match="does not exist"):
        resolve_init_model(str(tmp_path / "missing"))


@pytest.mark.slow
def test_an_adapter_for_a_scratch_model_is_refused_with_a_reason(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter/adapter_config.json").write_text("{}")

    run = run_finetune(run_args(tmp_path, "run", "--init_model_dir", tmp_path / "adapter"), cwd=tmp_path)

    assert run.returncode == 1
    assert "has no base to go on: continue from a merged model" in run.events[-1]["message"]


# ----------------------------------------------------------------------------- checkpoint folders


def tiny_training(max_steps: int = 10, **hparams):
    import torch
    from hardware import Hardware
    from schedule import plan_schedule
    from training_state import start_training
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    hp = {**validate_hyperparameters({})[0], "max_steps": max_steps, **hparams}
    schedule = plan_schedule(hp, 100)
    return start_training(model, hp, schedule, Hardware(torch.device("cpu"), "fp32")), schedule


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(
        ["a b c d e f"] * 4,
        specials=["<unk>"],
        bos=None,
        eos="<unk>",
        pad="<unk>",
        unk="<unk>",
        vocab_size=40,
    )


def train_steps(training, n: int) -> None:
    import torch

    for _ in range(n):
        ids = torch.randint(0, 40, (2, 8))
        loss = training.model(input_ids=ids, labels=ids).loss
        loss.backward()
        training.optimizer.step()
        training.lr_scheduler.step()
        training.optimizer.zero_grad()
        training.step += 1
        training.epoch_micro_batches += 1


FINGERPRINT = {"method": "full", "batch_size": 8}


def test_only_complete_checkpoints_count_and_the_newest_two_are_kept(tmp_path, tokenizer):
    from training_state import latest_checkpoint, save_checkpoint

    training, _ = tiny_training()
    for _ in range(3):
        train_steps(training, 2)
        save_checkpoint(training, tokenizer, str(tmp_path), FINGERPRINT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert latest_checkpoint(str(tmp_path))[0] == str(tmp_path / "checkpoint-6")

    shutil.copytree(tmp_path / "checkpoint-6", tmp_path / "checkpoint-8.tmp")
    (tmp_path / "checkpoint-6/state.json").unlink()
    assert latest_checkpoint(str(tmp_path))[0] == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4/trainer_state.pt").write_bytes(b"cut short")
    assert latest_checkpoint(str(tmp_path)) is None
    assert latest_checkpoint(str(tmp_path / "nothing-here")) is None


def test_resuming_restores_weights_optimizer_schedule_position_and_random_state(tmp_path, tokenizer):
    import torch
    from training_state import resume_from_latest, save_checkpoint

    training, schedule = tiny_training()
    train_steps(training, 3)
    training.epoch, training.eval_loss = 1, 2.5
    training.tracker.train_tokens, training.tracker.log_history = 48, [{"event": "progress", "step": 3}]
    save_checkpoint(training, tokenizer, str(tmp_path), FINGERPRINT)
    next_draw = torch.rand(3)
    expected_weights = {k: v.clone() for k, v in training.model.state_dict().items()}

    fresh, _ = tiny_training()
    torch.manual_seed(1234)
    step = resume_from_latest(fresh, str(tmp_path), FINGERPRINT, schedule.total_steps)

    assert step == fresh.step == 3 and fresh.epoch == 1 and fresh.epoch_micro_batches == 3
    assert fresh.eval_loss == 2.5 and fresh.tracker.train_tokens == 48
    assert fresh.tracker.log_history == [{"event": "progress", "step": 3}]
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, expected_weights[key]), key
    assert fresh.lr_scheduler.last_epoch == training.lr_scheduler.last_epoch == 3
    assert fresh.lr_scheduler.get_last_lr() == training.lr_scheduler.get_last_lr()
    saved_state, restored_state = (
        training.optimizer.state_dict()["state"],
        fresh.optimizer.state_dict()["state"],
    )
    assert saved_state.keys() == restored_state.keys()
    for index, moments in saved_state.items():
        assert torch.equal(moments["exp_avg"], restored_state[index]["exp_avg"])
    assert torch.equal(torch.rand(3), next_draw)  # the same dropout masks as the run that was stopped


def test_a_checkpoint_of_other_settings_or_past_the_end_is_refused(tmp_path, tokenizer):
    from reporting import TrainingError
    from training_state import resume_from_latest, save_checkpoint

    training, _ = tiny_training()
    train_steps(training, 4)
    save_checkpoint(training, tokenizer, str(tmp_path), FINGERPRINT)

    with pytest.raises(TrainingError) as caught:
        resume_from_latest(tiny_training()[0], str(tmp_path), {**FINGERPRINT, "batch_size": 4}, 10)
    assert "checkpoint-4 in the checkpoint folder was written by a run with other settings" in str(
        caught.value
    )
    assert "batch_size 8 there, 4 here" in str(caught.value)

    with pytest.raises(TrainingError, match="at step 4, past this run's 3 total steps"):
        resume_from_latest(tiny_training()[0], str(tmp_path), FINGERPRINT, 3)


def test_a_checkpoint_resumes_on_as_many_processes_as_wrote_it(tmp_path, tokenizer):
    from reporting import TrainingError
    from training_state import resume_from_latest, save_checkpoint

    training, _ = tiny_training()
    train_steps(training, 2)
    save_checkpoint(training, tokenizer, str(tmp_path), {**FINGERPRINT, "world_size": 2})

    with pytest.raises(TrainingError) as caught:
        resume_from_latest(tiny_training()[0], str(tmp_path), {**FINGERPRINT, "world_size": 4}, 10)
    message = str(caught.value)
    assert (
        "(world_size 2 there, 4 here); a checkpoint resumes on as many processes (GPUs) as wrote it"
        in message
    )
    # a checkpoint from before world_size was recorded is not held to it
    older = tmp_path / "older"
    save_checkpoint(training, tokenizer, str(older), FINGERPRINT)
    assert resume_from_latest(tiny_training()[0], str(older), {**FINGERPRINT, "world_size": 1}, 10) == 2


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    from training_state import resume_from_latest

    training, _ = tiny_training()
    assert resume_from_latest(training, str(tmp_path / "none"), FINGERPRINT, 10) == 0
    assert training.step == 0 and math.isclose(training.tracker.loss_sum, 0.0)
