"""Training throughput of training_scripts/finetune.py against a baseline, or over several processes.

    python bench/bench_finetune.py                     # against the Trainer recipe, 3 pairs, 60 steps
    python bench/bench_finetune.py --steps 100 --repeats 5 --seq-len 256
    # against the engine of an earlier commit (its training_scripts/, extracted with git archive):
    python bench/bench_finetune.py --baseline engine --ref 44fffff --threads 1 --precision bf16
    python bench/bench_finetune.py --baseline engine --size small --method lora --steps 4 --batch-size 2
    # two torchrun processes (gloo) against one, the same global batch: scaling efficiency
    python bench/bench_finetune.py --baseline processes --nproc 2 --threads 1
    # the same, the two processes sharded with FSDP (the one-process side has nothing to shard)
    python bench/bench_finetune.py --baseline processes --nproc 2 --threads 1 --sharding fsdp

--size small is a GPT-2-small-sized random-init model (12 layers, n_embd 768, 12 heads, the
GPT-2 vocabulary size of 50257; the tokenizer is still the 3000-token BPE, the other embedding rows
are just never used). --precision is what the current engine is told (auto, fp32, bf16); an
earlier engine has no such hyperparameter and trains fp32 on a CPU.

Both sides train the same tiny GPT-2 (2 layers, n_embd 128, 4 heads, a 3000-token byte-level
BPE learnt on the data; built once and saved to a folder both load) on the same text
samples with the same hyperparameters (full fine-tuning, batch size, sequence length,
steps, learning rate, linear schedule, no warm-up, fp32 on CPU / the same mixed precision
on a GPU). The baseline is the run_clm recipe: tokenize, `group_texts` into blocks, Trainer
with default_data_collator, no evaluation, no saving.

Each side runs as its own subprocess, alternately, `--repeats` times. Throughput is
training tokens / seconds from just before the first step to just after the last one
(finetune.py: its `done` event; baseline: on_train_begin .. on_train_end callbacks), so
process start, model loading and saving are left out of both; the wall time of each whole
process is printed too. The best run of each side is compared (the least disturbed by other
load on the machine); medians are printed too, and tokens per CPU-second of the same
training span, which other processes on a busy machine barely disturb when both sides run
one thread (`--threads 1`). Target: finetune.py tokens/s >= 1.0 x the
baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "training_scripts" / "finetune.py"

WORDS = " ".join(
    [
        "model data train token learn batch layer weight value loss step rate cloud job queue worker",
        "river stone forest market window garden silver yellow quick brown lazy happy north south",
        "east west morning evening winter summer city village road bridge music paper letter number",
    ]
).split(" ")


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            sentences.append(
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
            )
        rows.append({"text": " ".join(sentences)})
    return rows


def build_model(rows: list[dict], folder: Path, seq_len: int, size: str = "tiny") -> None:
    sys.path.insert(0, str(ROOT / "training_scripts"))
    from data import parse_sample
    from modelling import build_scratch  # the same builder as scratch:tiny-gpt2

    model, tokenizer = build_scratch("scratch:tiny-gpt2", [parse_sample(r) for r in rows], max(seq_len, 128))
    if size == "small":
        from transformers import GPT2LMHeadModel

        config = model.config
        config.update({"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257})
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def extract_engine(ref: str, folder: Path) -> Path:
    """training_scripts/ of commit ``ref`` (git archive), so an earlier engine runs beside this one."""
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "training_scripts"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "training_scripts" / "finetune.py"


# ----------------------------------------------------------------------------- baseline (child)


def baseline(args) -> None:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    with open(args.data, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    tokenized = tokenizer(texts)

    def group_texts(examples, block_size):  # as in examples/pytorch/language-modeling/run_clm.py
        concatenated = {k: sum(examples[k], []) for k in examples}
        total_length = len(concatenated["input_ids"])
        total_length = (total_length // block_size) * block_size
        result = {
            k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
            for k, t in concatenated.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = group_texts(dict(tokenized), args.seq_len)
    rows = [{k: grouped[k][i] for k in grouped} for i in range(len(grouped["input_ids"]))]

    class Timer(TrainerCallback):
        begin = end = cpu_begin = cpu_end = 0.0

        def on_train_begin(self, *a, **k):
            Timer.begin, Timer.cpu_begin = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            Timer.end, Timer.cpu_end = time.perf_counter(), time.process_time()

    gpu = torch.cuda.is_available()
    bf16 = gpu and torch.cuda.is_bf16_supported()
    targs = TrainingArguments(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=max(1, args.steps // 100),  # the same cadence finetune.py uses by default
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        bf16=bf16,
        fp16=gpu and not bf16,
        use_cpu=not gpu,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=rows,
        data_collator=default_data_collator,
        callbacks=[Timer()],
    )
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    tokens = args.steps * args.batch_size * args.seq_len
    seconds = Timer.end - Timer.begin
    result = {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "tokens_per_cpu_second": tokens / (Timer.cpu_end - Timer.cpu_begin),
        "train_call": total,
    }
    print(json.dumps(result))


# ----------------------------------------------------------------------------- parent


def child_env(args) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_finetune(
    args,
    model_dir: Path,
    data_dir: Path,
    out: Path,
    script: Path = SCRIPT,
    precision=None,
    nproc: int = 1,
    sharding=None,
) -> dict:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*launcher, str(script), "--train_dir", str(data_dir)]
    cmd += ["--model_dir", str(out / "model"), "--output_dir", str(out / "output")]
    # n processes take batch_size / n each: the same global batch, the same steps
    batch_size = args.batch_size // nproc
    hps = {
        "base_model": str(model_dir),
        "method": args.method,
        "max_steps": args.steps,
        "batch_size": batch_size,
        "max_seq_length": args.seq_len,
        "learning_rate": args.lr,
        "lr_scheduler": "linear",
        "warmup_ratio": 0,
        "weight_decay": 0,
        "seed": args.seed,
        "validation_split": 0,
        "num_sample_generations": 0,
    }
    if precision:
        hps["precision"] = precision
    if sharding:
        hps["sharding"] = sharding
    for k, v in hps.items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args))
    wall = time.perf_counter() - started
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    done = [e for e in events if e["event"] == "done"]
    if proc.returncode or not done:
        sys.exit(f"finetune.py failed ({proc.returncode}): {events[-1:]}\n{proc.stderr[-3000:]}")
    d = done[0]
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    # CPU seconds: rank 0's, times the processes (each runs the same work)
    return {
        "precision": metrics.get("precision"),
        "tokens": d["train_tokens"],
        "seconds": d["train_runtime"],
        "tokens_per_second": d["tokens_per_second"],
        "tokens_per_cpu_second": d["train_tokens"] / (metrics["train_cpu_seconds"] * nproc),
        "wall": wall,
    }


def run_baseline(args, model_dir: Path, data_file: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child-baseline", "--model", str(model_dir), "--data", str(data_file)]
    cmd += ["--out", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--seq-len", str(args.seq_len), "--lr", str(args.lr), "--seed", str(args.seed)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args))
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline",
        choices=("trainer", "engine", "processes"),
        default="trainer",
        help="trainer: the Trainer recipe; engine: finetune.py of --ref; processes: this engine on 1 process",
    )
    parser.add_argument("--ref", default="44fffff", help="the commit whose engine --baseline engine runs")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="told to this engine only")
    parser.add_argument("--nproc", type=int, default=2, help="processes of --baseline processes")
    parser.add_argument(
        "--sharding", choices=("ddp", "fsdp"), help="how the --nproc processes share the model"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for both sides (default: torch's choice)"
    )
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_baseline:
        baseline(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        tmp = Path(tmp)
        rows = make_rows(args.rows, args.seed)
        data_dir = tmp / "data"
        data_dir.mkdir()
        data_file = data_dir / "train.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        model_dir = tmp / f"{args.size}-gpt2"
        build_model(rows, model_dir, args.seq_len, args.size)
        if args.baseline == "trainer" and args.method != "full":
            sys.exit("the Trainer baseline trains full only: use --baseline engine for lora")
        old_script = extract_engine(args.ref, tmp / "ref") if args.baseline == "engine" else None
        names = {
            "trainer": ("finetune.py", "Trainer+group_texts"),
            "engine": ("finetune.py", f"finetune.py@{args.ref}"),
            "processes": (f"finetune.py x{args.nproc} {args.sharding or 'ddp'}", "finetune.py x1"),
        }[args.baseline]

        def ours_run(i):
            nproc = args.nproc if args.baseline == "processes" else 1
            return run_finetune(
                args,
                model_dir,
                data_dir,
                tmp / f"ft{i}",
                precision=args.precision,
                nproc=nproc,
                sharding=args.sharding if nproc > 1 else None,
            )

        def theirs_run(i):
            if args.baseline == "trainer":
                return run_baseline(args, model_dir, data_file, tmp / f"bl{i}")
            if args.baseline == "engine":
                return run_finetune(args, model_dir, data_dir, tmp / f"bl{i}", script=old_script)
            return run_finetune(args, model_dir, data_dir, tmp / f"bl{i}", precision=args.precision)

        print(
            f"{args.size} GPT-2 ({args.method}, precision {args.precision or 'default'}), {args.rows} text "
            f"rows, {args.steps} steps x batch {args.batch_size} x {args.seq_len} tokens, {args.repeats} "
            f"alternating pairs, {os.cpu_count()} CPUs, threads {args.threads or 'default'}, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        ours, theirs = [], []
        for i in range(args.repeats):
            a = ours_run(i)
            b = theirs_run(i)
            ours.append(a)
            theirs.append(b)
            print(
                f"  pair {i + 1}: {names[0]} {a['tokens_per_second']:9.0f} tok/s "
                f"({a['seconds']:.2f} s train, {a['wall']:.1f} s process, {a.get('precision')}) | "
                f"{names[1]} {b['tokens_per_second']:9.0f} tok/s "
                f"({b['seconds']:.2f} s train, {b['wall']:.1f} s process, {b.get('precision', 'fp32')}) | "
                f"ratio {a['tokens_per_second'] / b['tokens_per_second']:.3f}"
            )
        for name, runs in zip(names, (ours, theirs), strict=True):
            tps = [r["tokens_per_second"] for r in runs]
            print(
                f"{name:24s} best {max(tps):9.0f}  median {statistics.median(tps):9.0f} tokens/s   "
                f"(best process wall {min(r['wall'] for r in runs):.1f} s)"
            )
        for name, runs in zip(names, (ours, theirs), strict=True):
            cps = [r["tokens_per_cpu_second"] for r in runs]
            print(
                f"{name:24s} tokens per CPU-second: best {max(cps):9.0f}  "
                f"median {statistics.median(cps):9.0f}"
            )
        cpu_ratio = statistics.median(r["tokens_per_cpu_second"] for r in ours) / statistics.median(
            r["tokens_per_cpu_second"] for r in theirs
        )
        best = max(r["tokens_per_second"] for r in ours) / max(r["tokens_per_second"] for r in theirs)
        median = statistics.median(r["tokens_per_second"] for r in ours) / statistics.median(
            r["tokens_per_second"] for r in theirs
        )
        print(
            f"ratio of tokens per CPU-second (median): {cpu_ratio:.3f}  (load-independent with --threads 1)"
        )
        if args.baseline == "processes":
            print(
                f"scaling efficiency {names[0]} / ({args.nproc} x {names[1]}): "
                f"best-of {best / args.nproc:.3f}, median {median / args.nproc:.3f} "
                f"(tokens/s; needs {args.nproc} idle cores to mean much)"
            )
            return
        target = 1.3 if args.precision == "bf16" else 1.0
        verdict = "PASS" if best >= target else "FAIL"
        print(
            f"ratio {names[0]} / {names[1]}: best-of {best:.3f}, median {median:.3f}  "
            f"(target >= {target}: {verdict})"
        )


if __name__ == "__main__":
    main()
