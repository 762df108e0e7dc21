"""One training over several processes: which one this is, and the few collectives the loop needs.

torchrun (or SageMaker's Torchrun driver, which calls it) starts one process per device and sets
RANK, WORLD_SIZE and LOCAL_RANK; a plain ``python finetune.py`` is rank 0 of a world of 1 and never
touches torch.distributed. ``rank``/``world_size``/``is_main`` read the environment only (standard
library at import: reporting.py asks before torch is loaded); torch is imported by the functions
that need it.
"""

from __future__ import annotations

import datetime
import os

# A collective that waits longer than this means a peer is gone: fail instead of hanging. torchrun
# tears the group down as soon as one process exits, so this only matters when one is stuck.
COLLECTIVE_TIMEOUT = datetime.timedelta(
    minutes=int(os.environ.get("FINETUNE_COLLECTIVE_TIMEOUT_MINUTES", "10"))
)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def _initialised() -> bool:
    if not is_distributed():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(device_type: str) -> None:
    """Join the process group torchrun described (nccl on CUDA, gloo on CPU); nothing for one process."""
    if not is_distributed() or _initialised():
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    kwargs = {}
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
        kwargs["device_id"] = torch.device("cuda", local_rank())
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)


def barrier() -> None:
    """Wait for every process (rank 0 saving while the others wait)."""
    if _initialised():
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: list, device):
    """The element-wise sum over all processes of numbers and 0-d tensors, as one float64 tensor."""
    import torch

    tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device) for v in values])
    if _initialised():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_max(values: list[float], device) -> list[float]:
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if _initialised():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def shutdown() -> None:
    if _initialised():
        import torch.distributed as dist

        dist.destroy_process_group()
