"""The device a run trains on, its precision, and the autocast that goes with it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import distributed
import torch
from reporting import TrainingError, log

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def pad_multiple(self) -> int:
        return 8 if self.on_gpu else 1  # tensor cores like widths that are multiples of 8

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=self.on_gpu)

    def autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def describe(self) -> str:
        if not self.on_gpu:
            return str(self.device)
        return f"cuda ({torch.cuda.get_device_name(self.device)})"

    def synchronize(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()

    def peak_memory_bytes(self) -> int | None:
        """The most GPU memory tensors held at once in this process (None on a CPU)."""
        return int(torch.cuda.max_memory_allocated(self.device)) if self.on_gpu else None


def pick_hardware(precision: str = "auto") -> Hardware:
    """FINETUNE_DEVICE when set, else the GPU when there is one, else CPU; under torchrun, this process's GPU.

    ``precision`` (the hyperparameter): auto is bf16 where the device computes it natively (fp16 on
    a GPU without bf16, fp32 on a CPU without it); fp32 and bf16 force that.
    """
    forced = os.environ.get("FINETUNE_DEVICE")
    if forced:
        device = torch.device(forced)
    elif torch.cuda.is_available():
        device = torch.device("cuda", distributed.local_rank())
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Hardware(device, pick_precision(precision, device))


def pick_precision(precision: str, device: torch.device) -> str:
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        if precision == "bf16":
            raise TrainingError(
                f"precision bf16: this GPU ({torch.cuda.get_device_name(device)}) has no bf16: "
                "use auto or fp32"
            )
        return "fp16"
    if device.type != "cpu":
        return "fp32"
    if cpu_has_native_bf16():
        return "bf16"
    if precision == "bf16":
        log("precision bf16 on a CPU without native bf16 (no avx512_bf16 / AMX): emulated, slower than fp32")
        return "bf16"
    return "fp32"


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: the CPU multiplies bf16 itself (else bf16 autocast is emulated, slower)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    # Not Linux: oneDNN's own check (it also answers true on plain AVX512, where bf16 is emulated
    # less well, so /proc/cpuinfo comes first).
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False
