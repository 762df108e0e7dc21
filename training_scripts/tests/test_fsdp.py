"""finetune.py sharded with FSDP over two processes (torchrun, gloo on CPU).

FSDP must train as DDP does (the same global batch gives the same losses), save one whole model
that loads anywhere, and write checkpoints that DDP resumes and that FSDP resumes from DDP's: the
optimizer state is kept by parameter name, gathered from the shards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time

import pytest

from training_scripts.tests.helpers import (
    FAST,
    PC_ROWS,
    SCRIPT,
    TEXT_ROWS,
    assert_completed,
    base_env,
    parse_stdout,
    write_jsonl,
)
from training_scripts.tests.test_distributed import TORCHRUN, losses, paths, torchrun

STEPS = 12
ARGS = [
    *FAST,
    "--max_steps",
    STEPS,
    "--validation_split",
    "0.1",
    "--learning_rate",
    "2e-3",
    "--batch_size",
    "4",
    "--precision",
    "fp32",
    "--save_steps",
    "5",
    "--eval_samples",
    "8",
]


@pytest.fixture(scope="module")
def ddp_and_fsdp(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    train = write_jsonl(root / "data" / "train.jsonl", TEXT_ROWS).parent
    ddp = torchrun(2, ["--train_dir", train, *ARGS, *paths(root, "ddp"), "--sharding", "ddp"])
    fsdp = torchrun(2, ["--train_dir", train, *ARGS, *paths(root, "fsdp"), "--sharding", "fsdp"])
    return ddp, fsdp, root, train


@pytest.mark.slow
def test_fsdp_gives_one_training_and_one_whole_model(ddp_and_fsdp):
    from transformers import AutoModelForCausalLM

    ddp, fsdp, root, _ = ddp_and_fsdp
    assert_completed(ddp)
    assert_completed(fsdp)
    assert (fsdp.one("start")["sharding"], ddp.one("start")["sharding"]) == ("fsdp", "ddp")
    assert fsdp.one("start")["world_size"] == 2
    assert [e["step"] for e in fsdp.of("progress")] == list(range(1, STEPS + 1))
    assert [e["step"] for e in fsdp.of("checkpoint")] == [5, 10]
    assert len(fsdp.of("done")) == 1
    model_dir = root / "fsdp" / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["sharding"], metrics["world_size"]) == ("fsdp", 2)
    # the shards gathered into one ordinary checkpoint: plain names, the model's own class
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert sum(p.numel() for p in model.parameters()) == fsdp.one("start")["total_parameters"]
    # generations and the evaluation ran on the sharded model, on both processes in step
    assert json.loads((root / "fsdp" / "out" / "samples.json").read_text())[0]["generated"]
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    assert evaluation["tuned"]["perplexity"] < evaluation["base"]["perplexity"]


@pytest.mark.slow
def test_fsdp_answers_the_evaluation_prompts_on_both_processes_in_step(tmp_path):
    """Batched greedy generation on a sharded model: every process runs the same forward passes."""
    train = write_jsonl(tmp_path / "data" / "train.jsonl", PC_ROWS).parent
    args = [*FAST, "--max_steps", "4", "--validation_split", "0.2", "--eval_samples", "6"]
    run = torchrun(2, ["--train_dir", train, *args, *paths(tmp_path, "pc"), "--sharding", "fsdp"])
    assert_completed(run)
    evaluation = json.loads((tmp_path / "pc" / "model" / "evaluation.json").read_text())
    assert len(evaluation["samples"]) == 6
    assert {"exact_match", "token_f1"} <= set(evaluation["tuned"]) and {"exact_match", "token_f1"} <= set(
        evaluation["base"]
    )


@pytest.mark.slow
def test_fsdp_follows_the_loss_of_ddp(ddp_and_fsdp):
    ddp, fsdp, _, _ = ddp_and_fsdp
    replicated, sharded = losses(ddp), losses(fsdp)
    assert replicated.keys() == sharded.keys()
    for step in replicated:
        assert math.isclose(replicated[step], sharded[step], rel_tol=0.03), (step, replicated, sharded)
    assert sharded[STEPS] < sharded[1] * 0.8
    assert math.isclose(ddp.of("eval")[-1]["eval_loss"], fsdp.of("eval")[-1]["eval_loss"], rel_tol=0.03)


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_under_fsdp_as_if_never_stopped(ddp_and_fsdp, tmp_path):
    """The same weights, optimizer moments and data position: steps 6-12 repeat DDP's losses."""
    ddp, _, root, train = ddp_and_fsdp
    checkpoints = tmp_path / "resumed" / "out" / "checkpoints"
    shutil.copytree(root / "ddp" / "out" / "checkpoints" / "checkpoint-5", checkpoints / "checkpoint-5")
    resumed = torchrun(2, ["--train_dir", train, *ARGS, *paths(tmp_path, "resumed"), "--sharding", "fsdp"])
    assert_completed(resumed)
    assert resumed.one("start")["resumed_from_step"] == 5
    assert [e["step"] for e in resumed.of("progress")] == list(range(6, STEPS + 1))
    before = losses(ddp)
    for step, loss in losses(resumed).items():
        assert math.isclose(loss, before[step], rel_tol=1e-3), (step, loss, before[step])


@pytest.mark.slow
def test_an_fsdp_checkpoint_resumes_under_ddp(ddp_and_fsdp, tmp_path):
    _, fsdp, root, train = ddp_and_fsdp
    checkpoints = tmp_path / "resumed" / "out" / "checkpoints"
    shutil.copytree(root / "fsdp" / "out" / "checkpoints" / "checkpoint-10", checkpoints / "checkpoint-10")
    resumed = torchrun(2, ["--train_dir", train, *ARGS, *paths(tmp_path, "resumed"), "--sharding", "ddp"])
    assert_completed(resumed)
    assert [e["step"] for e in resumed.of("progress")] == [11, 12]
    # the first step after the resume is the step FSDP took from the same state
    assert math.isclose(losses(resumed)[11], losses(fsdp)[11], rel_tol=1e-3)


@pytest.mark.slow
def test_a_stopped_fsdp_run_leaves_its_model_and_a_checkpoint(tmp_path):
    """SIGTERM reaches both processes (torchrun forwards it); they agree, checkpoint and save together."""
    train = write_jsonl(tmp_path / "data" / "train.jsonl", TEXT_ROWS).parent
    args = [
        "--train_dir",
        train,
        *FAST,
        "--max_steps",
        "100000",
        "--sharding",
        "fsdp",
        *paths(tmp_path, "run"),
    ]
    proc = subprocess.Popen(
        [*TORCHRUN, "--nproc_per_node", "2", str(SCRIPT), *[str(a) for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if '"event": "progress"' in line and '"step": 3,' in line:
                break
        proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    events = parse_stdout("".join(lines) + stdout)
    stopped = [e for e in events if e["event"] == "stopped"]
    assert stopped and stopped[0]["model_saved"], (events[-3:], stderr[-3000:])
    assert time.monotonic() - stopped_at < 120
    step = stopped[0]["step"]
    checkpoint = tmp_path / "run" / "out" / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "state.json").exists() and (checkpoint / "trainer_state.pt").exists()
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert os.path.getsize(tmp_path / "run" / "model" / "model.safetensors") > 100_000
