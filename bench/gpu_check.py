"""The GPU check (bench/gpu_check.sh): finetune.py on random-init Llama models of ~125 M and ~1 B
parameters, bf16, full / LoRA / QLoRA; tokens/s, MFU and peak memory beside the memory check's figure.

    bench/gpu_check.sh                 # on a machine with one CUDA GPU: under 8 minutes
    bench/gpu_check.sh --dry-run       # anywhere: the plan, parameter counts, FLOPs and estimates

Each run is the real engine (python training_scripts/finetune.py) on a model folder written here
(random weights, a byte-level BPE learnt on generated text; nothing downloaded). Figures:

- tokens/s: the engine's own (training tokens over training time, model loading and saving left out);
- MFU: tokens/s x training FLOPs per token / the GPU's dense bf16 peak. FLOPs per token are
  6 N + 12 L d S for full fine-tuning (N the parameters of the matmuls, the LM head included, L
  layers, d hidden size, S sequence length: PaLM, appendix B) and 4 N + 12 L d S with adapters (no
  weight gradients for the frozen base); the peak comes from PEAK_BF16_TFLOPS by the GPU's name, or
  GPU_PEAK_TFLOPS in the environment;
- peak: torch.cuda.max_memory_allocated of the run (metrics.json ``peak_memory_bytes``), beside
  jobs/memory.py's ``allocated_bytes`` for the same setup (the goal is within +-25 %); "n/a" where
  jobs/memory.py is not in this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "training_scripts" / "finetune.py"
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOPS, no sparsity), matched in this
# order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),  # A10 datasheet; AWS's A10G is of the same chip
]

MODELS = {
    # a smoke test of the script itself, on a CPU too (--models llama-tiny --allow-cpu)
    "llama-tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    "llama-125m": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "intermediate_size": 2048,
    },
    "llama-1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
    },
}
VOCAB = 32_000
METHODS = ("full", "lora", "qlora")
SEQ_LEN = 512
BATCH = 4
STEPS = 30


def llama_config(name: str, tokenizer=None):
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=2048, tie_word_embeddings=False, **MODELS[name], **ids
    )


def count_parameters(config) -> tuple[int, int]:
    """(all parameters, those of matmuls: all but the input embedding), without allocating them."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def flops_per_token(config, matmul_params: int, method: str, seq_len: int) -> float:
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return (6 if method == "full" else 4) * matmul_params + attention


def gpu_peak_tflops(name: str) -> float | None:
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"])
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def platform_estimate(config, params: int, method: str) -> int | None:
    """jobs/memory.py's figure for this setup (allocated bytes per device), or None where it is absent.

    The hook: jobs/memory.py is the platform's pure function (Setup, Shape, peak_memory); this
    checkout may not have it yet, or its signature may differ: then "n/a".
    """
    try:
        from jobs import memory
    except ImportError:
        return None
    try:
        shape = memory.Shape(
            config.hidden_size, config.num_hidden_layers, config.vocab_size, tied_embeddings=False
        )
        setup = memory.Setup(
            parameters=params,
            shape=shape,
            method=method,
            precision="bf16",
            batch_size=BATCH,
            seq_length=SEQ_LEN,
            lora_r=16,
        )
        return int(memory.peak_memory(setup).allocated_bytes)
    except Exception as exc:  # the hook is there; its shape is not what this expects
        print(f"  jobs/memory.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def build_folder(name: str, folder: Path, texts: list[str]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<unk>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds
        model = LlamaForCausalLM(llama_config(name, tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def texts(n: int = 3000) -> list[str]:
    rng = random.Random(0)
    words = ["model", "data", "train", "token", "learn", "batch", "layer", "weight", "value", "loss"]
    words += ["step", "rate", "river", "stone", "forest"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(80, 200))) + "." for _ in range(n)]


def run_engine(model: Path, data: Path, out: Path, method: str, timeout: float) -> dict:
    hps = {
        "base_model": str(model),
        "method": method,
        "precision": "bf16",
        "max_steps": STEPS,
        "batch_size": BATCH,
        "max_seq_length": SEQ_LEN,
        "learning_rate": 1e-4,
        "warmup_ratio": 0,
        "validation_split": 0,
        "num_sample_generations": 0,
        "merge_adapter": False,
        "logging_steps": 10,
    }
    cmd = [sys.executable, str(SCRIPT), "--train_dir", str(data), "--model_dir", str(out / "model")]
    cmd += ["--output_dir", str(out / "out")]
    for key, value in hps.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode:
        message = next((e.get("message") for e in events if e["event"] == "error"), proc.stderr[-800:])
        return {"error": message, "wall": time.monotonic() - started}
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    return {
        "tokens_per_second": metrics["tokens_per_second"],
        "peak_memory_bytes": metrics.get("peak_memory_bytes"),
        "final_loss": metrics.get("final_loss"),
        "wall": time.monotonic() - started,
    }


def main() -> int:  # noqa: C901 - one table, one loop
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="no training: the plan and the estimates (CPU)"
    )
    parser.add_argument("--models", nargs="+", default=["llama-125m", "llama-1b"], choices=list(MODELS))
    parser.add_argument("--allow-cpu", action="store_true", help="train on a CPU (a smoke test: llama-tiny)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--budget-seconds", type=float, default=450, help="stop starting runs after this")
    args = parser.parse_args()
    globals().update(STEPS=args.steps, SEQ_LEN=args.seq_len)  # read by run_engine and the estimates

    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not args.dry_run and not args.allow_cpu:
        print(
            "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}): run it on a GPU machine, or with --dry-run for the plan only",
            file=sys.stderr,
        )
        return 2
    name = torch.cuda.get_device_name(0) if gpu else "no GPU"
    peak = gpu_peak_tflops(name) if gpu else None
    capacity = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None
    print(
        f"gpu_check: {name}, bf16 peak {peak or 'n/a'} TFLOPS, memory {capacity and round(capacity, 1)} GiB; "
        f"{STEPS} steps x batch {BATCH} x {SEQ_LEN} tokens, bf16, torch {torch.__version__}"
    )
    header = f"{'model':11s} {'method':6s} {'params':>8s} {'tokens/s':>9s} {'MFU':>6s} {'peak GiB':>9s} "
    print(header + f"{'estimate GiB':>12s} {'est/peak':>8s} {'wall s':>7s}")
    started = time.monotonic()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        corpus = texts()
        (data / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
        for model_name in args.models:
            config = llama_config(model_name)
            total, matmul = count_parameters(config)
            folder = tmp / model_name
            if not args.dry_run:
                build_folder(model_name, folder, corpus)
            for method in args.methods:
                estimate = platform_estimate(config, total, method)
                est = f"{estimate / 2**30:.2f}" if estimate else "n/a"
                flops = flops_per_token(config, matmul, method, SEQ_LEN)
                row = f"{model_name:11s} {method:6s} {total / 1e6:7.0f}M "
                if args.dry_run:
                    print(
                        row + f"{'-':>9s} {'-':>6s} {'-':>9s} {est:>12s} {'-':>8s} {'-':>7s}  "
                        f"({flops / 1e9:.2f} GFLOP/token)"
                    )
                    continue
                left = args.budget_seconds - (time.monotonic() - started)
                if left < 30:
                    print(row + "skipped: the time budget is spent")
                    continue
                try:
                    result = run_engine(folder, data, tmp / f"{model_name}-{method}", method, timeout=left)
                except subprocess.TimeoutExpired:
                    result = {"error": "timed out", "wall": left}
                if "error" in result:
                    failures += 1
                    print(row + f"FAILED ({result['error']})")
                    continue
                tps, used = result["tokens_per_second"], result["peak_memory_bytes"]
                mfu = f"{tps * flops / (peak * 1e12):.1%}" if peak else "n/a"
                ratio = f"{estimate / used:.2f}" if estimate and used else "n/a"
                used_gib = f"{used / 2**30:.2f}" if used else "n/a"
                print(
                    row + f"{tps:9.0f} {mfu:>6s} {used_gib:>9s} {est:>12s} {ratio:>8s} {result['wall']:7.1f}"
                )
    print(f"gpu_check: {time.monotonic() - started:.0f} s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
