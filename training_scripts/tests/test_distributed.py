"""finetune.py over several processes (torchrun, gloo on CPU), bf16 autocast on CPU, and QLoRA.

Two CPU processes on the tiny model must give one training: each step reported once, one model
saved, losses that follow one process with the same global batch. The scratch GPT-2 has dropout,
whose random draws differ between one process and two, hence tolerances rather than equality.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training_scripts import progress
from training_scripts.hyperparameters import to_sagemaker_hyperparameters
from training_scripts.tests.helpers import (
    CHAT_ROWS,
    FAST,
    SCRIPT,
    SCRIPTS_DIR,
    TEXT_ROWS,
    Run,
    assert_completed,
    assert_loss_falls,
    base_env,
    parse_stdout,
    run_finetune,
    write_jsonl,
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
STEPS = 12
COMMON = [*FAST, "--max_steps", STEPS, "--validation_split", "0.1", "--learning_rate", "2e-3"]


def torchrun(nproc: int, args, env=None, timeout=300) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [*TORCHRUN, "--nproc_per_node", str(nproc), str(SCRIPT), *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or base_env(),
    )
    return Run(proc.returncode, parse_stdout(proc.stdout), proc.stdout, proc.stderr, time.monotonic() - start)


def paths(root: Path, name: str) -> list:
    return ["--model_dir", root / name / "model", "--output_dir", root / name / "out"]


def losses(run: Run) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in run.of("progress")}


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """One process with accumulation 2 against two processes with accumulation 1: the same global batch."""
    root = tmp_path_factory.mktemp("ddp")
    train = write_jsonl(root / "data" / "train.jsonl", TEXT_ROWS).parent
    args = ["--train_dir", train, *COMMON, "--batch_size", "4", "--precision", "fp32", "--save_steps", "5"]
    one = run_finetune([*args, *paths(root, "one"), "--gradient_accumulation_steps", "2"])
    two = torchrun(2, [*args, *paths(root, "two"), "--gradient_accumulation_steps", "1"])
    return one, two, root


@pytest.mark.slow
def test_two_processes_give_one_training(one_and_two):
    one, two, root = one_and_two
    assert_completed(one)
    assert_completed(two)
    start = two.one("start")
    assert (start["world_size"], one.one("start")["world_size"]) == (2, 1)
    assert start["effective_batch_size"] == one.one("start")["effective_batch_size"] == 8
    assert start["total_steps"] == one.one("start")["total_steps"] == STEPS
    steps = [e["step"] for e in two.of("progress")]
    assert steps == list(range(1, STEPS + 1))  # each step once: only rank 0 speaks
    assert len(two.of("done")) == 1 and len(two.of("eval")) == len(one.of("eval"))
    assert [e["step"] for e in two.of("checkpoint")] == [5, 10]
    assert sorted(p.name for p in (root / "two" / "out" / "checkpoints").iterdir()) == [
        "checkpoint-10",
        "checkpoint-5",
    ]
    model = root / "two" / "model"
    assert (model / "model.safetensors").exists() and json.loads((model / "metrics.json").read_text())[
        "world_size"
    ] == 2
    assert json.loads((root / "two" / "out" / "samples.json").read_text())


@pytest.mark.slow
def test_two_processes_follow_the_loss_of_one_with_the_same_global_batch(one_and_two):
    one, two, _ = one_and_two
    single, double = losses(one), losses(two)
    assert single.keys() == double.keys()
    for step in single:
        assert math.isclose(single[step], double[step], rel_tol=0.03), (step, single, double)
    assert double[STEPS] < double[1] * 0.8  # and it learnt
    eval_one, eval_two = one.of("eval")[-1]["eval_loss"], two.of("eval")[-1]["eval_loss"]
    assert math.isclose(eval_one, eval_two, rel_tol=0.03), (eval_one, eval_two)
    # tokens/s counts the tokens of both processes: the same tokens per step as one process
    assert two.one("done")["train_tokens"] == one.one("done")["train_tokens"]


@pytest.mark.slow
def test_an_epoch_of_two_processes_has_the_steps_of_one_process_with_double_accumulation(tmp_path):
    """epochs, not max_steps: the schedule follows the global batch (per device x accumulation x world)."""
    train = write_jsonl(tmp_path / "data" / "train.jsonl", TEXT_ROWS[:100]).parent
    args = ["--train_dir", train, *FAST, "--epochs", "1", "--batch_size", "8", "--validation_split", "0"]
    two = torchrun(2, [*args, *paths(tmp_path, "two"), "--num_sample_generations", "0"])
    assert_completed(two)
    # 100 samples of at most 64 tokens packed into blocks; ceil(blocks/8) micro-batches, over 2 ranks
    blocks = two.one("start")["tokens"] / 64
    assert two.one("start")["total_steps"] == math.ceil(math.ceil(math.ceil(blocks) / 8) / 2)


def find_rank_process(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the descendants of ``parent``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry)
    return None


@pytest.mark.slow
def test_a_process_that_dies_ends_the_training_instead_of_hanging_the_others(tmp_path):
    train = write_jsonl(tmp_path / "data" / "train.jsonl", TEXT_ROWS).parent
    args = [
        "--train_dir",
        train,
        *FAST,
        "--max_steps",
        "100000",
        "--batch_size",
        "2",
        *paths(tmp_path, "run"),
    ]
    proc = subprocess.Popen(
        [*TORCHRUN, "--nproc_per_node", "2", str(SCRIPT), *[str(a) for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
    )
    try:
        for line in proc.stdout:  # training has begun on both (a step needs both)
            if '"event": "progress"' in line:
                break
        worker = find_rank_process(proc.pid, 1)
        assert worker, "no worker with RANK=1 under torchrun"
        os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
        killed_at = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 90  # torchrun stopped rank 0: nothing waits for a dead peer
    assert "done" not in [e["event"] for e in parse_stdout(stdout)]
    assert "SIGKILL" in stderr or "Signal 9" in stderr or "exitcode" in stderr, stderr[-2000:]


@pytest.mark.slow
def test_the_sagemaker_sdk_torchrun_driver_runs_the_script_in_the_opt_ml_layout(tmp_path):
    """AWS's own driver (sagemaker.train.distributed.Torchrun) starts the processes, as in the container."""
    import sagemaker.train

    root = tmp_path / "opt_ml"
    drivers = Path(sagemaker.train.__file__).parent / "container_drivers"
    shutil.copytree(drivers, root / "input/data/sm_drivers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        SCRIPTS_DIR, root / "input/data/code", ignore=shutil.ignore_patterns("tests", "__pycache__")
    )
    write_jsonl(root / "input/data/train/train.jsonl", TEXT_ROWS)
    write_jsonl(root / "input/data/validation/validation.jsonl", TEXT_ROWS[:16])
    hps = {
        "base_model": "scratch:tiny-gpt2",
        "max_steps": 6,
        "batch_size": 4,
        "max_seq_length": 64,
        "logging_steps": 1,
        "num_sample_generations": 1,
        "sample_max_new_tokens": 8,
    }
    env = base_env(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # its torchrun
            "SM_ENTRY_SCRIPT": "finetune.py",
            "SM_DISTRIBUTED_CONFIG": json.dumps({"process_count_per_node": 2, "smp": None}),
            "SM_HPS": json.dumps(to_sagemaker_hyperparameters(hps)),
            "SM_HOST_COUNT": "1",
            "SM_CURRENT_INSTANCE_TYPE": "ml.m5.xlarge",
            "SM_CHANNEL_TRAIN": str(root / "input/data/train"),
            "SM_CHANNEL_VALIDATION": str(root / "input/data/validation"),
            "SM_MODEL_DIR": str(root / "model"),
            "SM_OUTPUT_DATA_DIR": str(root / "output/data"),
        }
    )
    proc = subprocess.run(
        [sys.executable, str(root / "input/data/sm_drivers/distributed_drivers/torchrun_driver.py")],
        cwd=root / "input/data/code",
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "--nproc_per_node=2" in output  # the driver's own command line
    # The driver logs each line of torchrun's output; CloudWatch gets those lines, parsed as events.
    events = [e for e in map(progress.parse_event, output.splitlines()) if e]
    kinds = [e["event"] for e in events if e["event"] != "phase"]  # the phases come before the start
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    assert next(e for e in events if e["event"] == "start")["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "progress"] == list(range(1, 7))
    assert (root / "model" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- bf16 on CPU


def native_bf16() -> bool:
    sys.path.insert(0, str(SCRIPTS_DIR))
    import hardware

    return hardware.cpu_has_native_bf16()


@pytest.mark.slow
def test_bf16_autocast_on_cpu_keeps_the_loss_of_fp32(tmp_path):
    train = write_jsonl(tmp_path / "data" / "train.jsonl", TEXT_ROWS).parent
    args = ["--train_dir", train, *COMMON]
    fp32 = run_finetune([*args, *paths(tmp_path, "fp32"), "--precision", "fp32"])
    auto = run_finetune([*args, *paths(tmp_path, "auto")])
    assert_completed(fp32)
    assert_completed(auto)
    assert fp32.one("start")["precision"] == "fp32"
    assert auto.one("start")["precision"] == ("bf16" if native_bf16() else "fp32")
    bf16 = auto if native_bf16() else run_finetune([*args, *paths(tmp_path, "bf16"), "--precision", "bf16"])
    assert bf16.one("start")["precision"] == "bf16"
    full, half = losses(fp32), losses(bf16)
    for step in full:
        assert math.isclose(full[step], half[step], rel_tol=0.03), (step, full, half)
    assert math.isclose(fp32.of("eval")[-1]["eval_loss"], bf16.of("eval")[-1]["eval_loss"], rel_tol=0.03)


# ----------------------------------------------------------------------------- QLoRA


def qlora_args(tmp_path: Path, model: Path, *extra) -> list:
    train = write_jsonl(tmp_path / "data" / "train.jsonl", CHAT_ROWS).parent
    return [
        "--train_dir",
        train,
        *FAST,
        "--base_model",
        model,
        "--method",
        "qlora",
        "--lora_r",
        "8",
        "--learning_rate",
        "2e-2",
        "--max_steps",
        "15",
        "--validation_split",
        "0",
        *paths(tmp_path, "q"),
        *extra,
    ]


@pytest.mark.slow
def test_qlora_trains_a_4bit_base_and_saves_the_adapter(tmp_path, tiny_llama):
    pytest.importorskip("bitsandbytes")
    run = run_finetune(qlora_args(tmp_path, tiny_llama, "--merge_adapter", "false"))
    assert_completed(run)
    assert_loss_falls(run, factor=0.95)  # only the adapters of a random model learn: slowly
    assert run.one("start")["method"] == "qlora"
    model_dir = tmp_path / "q" / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_llama)
    assert json.loads((model_dir / "metrics.json").read_text())["adapter_merged"] is False


@pytest.mark.slow
def test_qlora_merged_on_request_is_a_bf16_model_of_the_base_architecture(tmp_path, tiny_llama):
    pytest.importorskip("bitsandbytes")
    run = run_finetune(qlora_args(tmp_path, tiny_llama, "--merge_adapter", "true"))
    assert_completed(run)
    model_dir = tmp_path / "q" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        dtypes = {str(weights.get_tensor(n).dtype) for n in names}
    assert dtypes == {"torch.bfloat16"}, dtypes
    assert not [n for n in names if "lora" in n or "absmax" in n or "quant" in n], names
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"


def test_qlora_on_a_scratch_model_is_refused_before_training(tmp_path):
    train = write_jsonl(tmp_path / "data" / "train.jsonl", TEXT_ROWS).parent
    run = run_finetune(["--train_dir", train, "--method", "qlora", *paths(tmp_path, "q")])
    assert run.returncode == 2
    assert "method" in run.events[-1]["errors"]
    assert "nothing to quantise" in run.events[-1]["message"]


# ----------------------------------------------------------------------------- data sharding


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_each_block_is_seen_once_per_epoch_over_all_ranks_with_equal_counts(world_size):
    from batching import PackedData, epoch_batches, micro_batches_per_epoch

    examples = [([i, i + 1, i + 2], [i, i + 1, i + 2]) for i in range(0, 37 * 8, 3)]
    data = PackedData(examples, block=8, pad_id=0)
    single = [b.input_ids.tolist() for b in epoch_batches(data, 4, seed=7, epoch=1, pad_multiple=1)]
    shards = [list(epoch_batches(data, 4, 7, 1, 1, rank, world_size)) for rank in range(world_size)]
    assert {len(s) for s in shards} == {micro_batches_per_epoch(data, 4, world_size)}
    real = [b for s in shards for b in s if not b.filler]
    rows = sorted(tuple(row) for b in real for row in b.input_ids.tolist())
    assert rows == sorted(tuple(row) for batch in single for row in batch)  # each block once
    assert all(b.n_targets == 0 and b.tokens == 0 for s in shards for b in s if b.filler)
    # micro-batch k of rank r is micro-batch k * world_size + r of one process: the same steps
    for rank, shard in enumerate(shards):
        for k, batch in enumerate(shard):
            if not batch.filler:
                assert batch.input_ids.tolist() == single[k * world_size + rank]
