"""Load the model: a scratch GPT-2 or a pretrained one (4-bit for QLoRA), LoRA on top, placed on the
device, and wrapped for several processes (DDP, or FSDP for a sharded full fine-tune) when torchrun
started more than one."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import distributed
import hyperparameters as hp
import torch
from data import Corpus, Sample, sample_strings
from hardware import Hardware
from hub import hf_token, resolve_base_model, unavailable
from init_model import load_init_model
from reporting import TrainingError, log
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

SCRATCH_EOS = "<|endoftext|>"
SCRATCH_PAD = "<|pad|>"

# LoRA target modules per architecture (config.model_type); others fall back to peft's
# defaults, then to all linear layers.
_ATTN_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "umt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neo": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "stablelm",
            "starcoder2",
            "smollm3",
            "granite",
            "cohere",
        ),
        _ATTN_QKVO,
    ),
}


def build_scratch(name: str, samples: list[Sample], max_len: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    spec = hp.SCRATCH_MODELS[name]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab_size"],
        min_frequency=2,
        special_tokens=[SCRATCH_EOS, SCRATCH_PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(itertools.islice(sample_strings(samples), 200_000), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SCRATCH_EOS,
        eos_token=SCRATCH_EOS,
        unk_token=SCRATCH_EOS,
        pad_token=SCRATCH_PAD,
        model_max_length=max_len,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_len,
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config), tokenizer


def quantization_config(device: torch.device):
    """QLoRA's base: 4-bit NF4 weights with double quantisation, computing in bf16 (bitsandbytes)."""
    try:
        import bitsandbytes  # noqa: F401 - transformers needs it to load in 4-bit
    except ImportError:
        raise TrainingError(
            "method qlora needs the bitsandbytes package, which this environment lacks: use lora"
        ) from None
    if device.type not in ("cuda", "cpu"):
        raise TrainingError(f"method qlora runs on CUDA GPUs (and CPUs), not on {device.type}: use lora")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def load_pretrained(name: str, method: str, device: torch.device, precision: str):
    token = hf_token()
    source, local_only = resolve_base_model(name, token)
    common = {"token": token, "local_files_only": local_only}
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except ValueError as exc:
        raise TrainingError(
            f"Model '{name}' has an architecture this transformers version does not know ({exc}); "
            "models that need custom code are not run."
        ) from None
    except OSError as exc:
        raise unavailable(name, local_only, exc) from None
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if method == "qlora" and seq2seq:
        raise TrainingError(
            f"method qlora is for causal language models; {name} ({config.model_type}) is seq2seq: use lora"
        )
    dtype = torch.float32
    if method == "lora" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16  # frozen base in half precision
    extra = {}
    if method == "qlora":
        dtype = torch.bfloat16  # what is not quantised (norms, embeddings) stays in the compute dtype
        extra["quantization_config"] = quantization_config(device)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        placement = {"device_map": {"": device.index or 0}} if device.type == "cuda" else {}
        model = cls.from_pretrained(source, config=config, dtype=dtype, **placement, **extra, **common)
    except ValueError as exc:
        raise TrainingError(
            f"Model '{name}' ({config.model_type}) is neither a causal nor a seq2seq language model: {exc}"
        ) from None
    except OSError as exc:
        raise unavailable(name, local_only, exc) from None
    return model, tokenizer, seq2seq


def lora_target_modules(model, model_type: str):
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = LORA_TARGETS.get(model_type)
    if targets and all(t in names for t in targets):
        return targets
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    if model_type in peft_defaults:
        return None  # peft's own choice for this architecture
    return "all-linear"


def apply_lora(model, hparams: dict, seq2seq: bool):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora_target_modules(model, model.config.model_type)
    config = LoraConfig(
        r=hparams["lora_r"],
        lora_alpha=hparams["lora_alpha"],
        lora_dropout=hparams["lora_dropout"],
        target_modules=targets,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
    )
    model = get_peft_model(model, config)
    used = model.peft_config["default"].target_modules
    return model, sorted(used) if isinstance(used, set | list | tuple) else used


def max_positions(config) -> int | None:
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    seq2seq: bool
    max_len: int  # max_seq_length, capped at what the model supports
    pad_id: int
    decoder_start_id: int | None
    lora_targets: Any
    total_parameters: int
    trainable_parameters: int


def load_model(
    hparams: dict, corpus: Corpus, hardware: Hardware, init_model_dir: str | None = None
) -> LoadedModel:
    if init_model_dir:  # continue training a saved model (C3) instead of starting from the base weights
        model, tokenizer, seq2seq = load_init_model(init_model_dir, hparams, hardware)
    else:
        model, tokenizer, seq2seq = load_base_model(hparams, corpus, hardware)
    max_len = fit_max_seq_length(hparams, model, seq2seq)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model, lora_targets = prepare_for_training(model, hparams, seq2seq, hardware)
    decoder_start = getattr(model.config, "decoder_start_token_id", None)
    total, trainable = count_parameters(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        seq2seq=seq2seq,
        max_len=max_len,
        pad_id=pad_id,
        decoder_start_id=pad_id if decoder_start is None else decoder_start,
        lora_targets=lora_targets,
        total_parameters=total,
        trainable_parameters=trainable,
    )


def load_base_model(hparams: dict, corpus: Corpus, hardware: Hardware):
    """(model, tokenizer, seq2seq) of base_model: a scratch GPT-2 learnt on the data, or a pretrained one."""
    base = hparams["base_model"]
    if hp.is_scratch_model(base):
        model, tokenizer = build_scratch(base, corpus.train + corpus.eval, hparams["max_seq_length"])
        return model, tokenizer, False
    return load_pretrained(base, hparams["method"], hardware.device, hardware.precision)


def fit_max_seq_length(hparams: dict, model, seq2seq: bool) -> int:
    max_len = hparams["max_seq_length"]
    limit = None if seq2seq else max_positions(model.config)
    if limit and max_len > limit:
        log(f"max_seq_length {max_len} exceeds what {hparams['base_model']} supports; using {limit}")
        return limit
    return max_len


def prepare_for_training(model, hparams: dict, seq2seq: bool, hardware: Hardware):
    """Gradient checkpointing and LoRA as asked, on the device; (model, LoRA target modules)."""
    checkpointing = {"use_reentrant": False}
    if hparams["method"] == "qlora":
        from peft import prepare_model_for_kbit_training

        # Norms in fp32, inputs that require grad (for checkpointing through frozen 4-bit layers).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=hparams["gradient_checkpointing"],
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif hparams["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    lora_targets = None
    if hparams["method"] in hp.ADAPTER_METHODS and hasattr(model, "peft_config"):  # an adapter continued (C3)
        lora_targets = sorted(model.peft_config["default"].target_modules)
    elif hparams["method"] in hp.ADAPTER_METHODS:
        model, lora_targets = apply_lora(model, hparams, seq2seq)
    # A 4-bit model is placed where it was loaded (device_map); FSDP moves each layer to the device
    # as it shards it, so the whole model never has to fit one device at once.
    if hparams["method"] != "qlora" and not uses_fsdp(hparams):
        model.to(hardware.device)
    with contextlib.suppress(Exception):
        model.config.use_cache = False
    return model, lora_targets


def uses_fsdp(hparams: dict) -> bool:
    """Shard this run with FSDP: asked for, a full fine-tune, and more than one process."""
    return hparams["sharding"] == "fsdp" and hparams["method"] == "full" and distributed.is_distributed()


def shard_for_processes(model, hardware: Hardware):
    """FSDP (PyTorch's ``fully_shard``, FSDP2): each process keeps 1/world of the weights, and so of
    their gradients and optimizer states; a layer's weights are gathered while it computes.

    Each transformer layer is its own unit (a layer gathered at a time, as the memory check counts),
    the embeddings and the head in the root. Parameters stay fp32 and autocast computes in bf16, as
    under DDP. In place: call it before the optimizer is made, which must hold the sharded parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # the device this run trains on (FINETUNE_DEVICE may say cpu on a machine with GPUs)
    mesh = init_device_mesh(hardware.device.type, (distributed.world_size(),))
    for layer in transformer_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if distributed.is_main():
        log(
            f"FSDP: weights, gradients and optimizer states sharded over {distributed.world_size()} processes"
        )
    return model


def transformer_layers(model) -> list:
    """The repeated blocks of a Hugging Face model: the classes it names as never split across
    devices (``_no_split_modules``: GPT2Block, LlamaDecoderLayer, T5Block…), else the longest ModuleList."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_for_processes(model, hardware: Hardware):
    """The model the training passes go through: DDP over the processes torchrun started, else itself.

    Each process holds the whole model and its optimizer state (DDP keeps them identical by
    averaging the gradients of the trainable parameters only: a LoRA run exchanges just the adapter's).
    A model FSDP sharded already is its own wrapper.
    """
    if not distributed.is_distributed() or is_sharded(model):
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [hardware.device.index] if hardware.on_gpu else None
    return DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def gradient_sync(model, enabled: bool):
    """Exchange gradients in this backward pass or not (only the last micro-batch of a step does):
    DDP's ``no_sync``, FSDP's ``set_requires_gradient_sync``; nothing for one process."""
    if enabled or not distributed.is_distributed():
        yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def merged_adapter_model(model, hparams: dict):
    """A QLoRA run's adapter on its base loaded again in bf16 (a 4-bit base would merge lossily).

    Returns the PEFT model, ready for ``merge_and_unload``.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    device = next(p.device for p in model.parameters() if p.requires_grad)
    adapter_state = get_peft_model_state_dict(model)
    lora_config = model.peft_config["default"]
    base, _, _ = load_pretrained(hparams["base_model"], "lora", device, "bf16")
    with contextlib.suppress(Exception):
        base.config.use_cache = False
    merged = get_peft_model(base.to(device), lora_config)
    set_peft_model_state_dict(merged, adapter_state)
    log("method qlora: the adapter was merged into the base model loaded in bf16")
    return merged
