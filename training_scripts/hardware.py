"""The device a run trains on, its precision, and the autocast that goes with it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

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


def pick_hardware() -> Hardware:
    """FINETUNE_DEVICE when set, else the GPU when there is one (bf16 if it can, else fp16), else CPU."""
    forced = os.environ.get("FINETUNE_DEVICE")
    if forced:
        device = torch.device(forced)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    if device.type != "cuda":
        return Hardware(device, "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return Hardware(device, "bf16" if torch.cuda.is_bf16_supported() else "fp16")
