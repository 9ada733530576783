"""DDP plumbing for torchrun launches (NCCL on GPUs, gloo on CPU).

``torchrun --nproc_per_node N -m tdsk.train ...`` sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; a plain ``python -m tdsk.train`` runs as rank 0 of 1.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu or auto")
        return torch.device(f"cuda:{local_rank}")
    return torch.device(requested)


def init(device: str | None = "auto", timeout_s: float = 1800) -> DistInfo:
    """Start the process group if launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)
    if world > 1 and not dist.is_initialized():
        info.backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=info.backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    elif dist.is_initialized():
        info.backend = dist.get_backend()
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown(info: DistInfo, sync: bool = True) -> None:
    """Tear the process group down. ``sync`` (the normal end, every rank gets here): after a
    barrier, so that no rank closes its connections while a peer is still finishing the last
    collective (a gloo rank once aborted with "terminate called without an active exception"
    at this point in a loaded CI run). ``sync=False`` on a path only this rank takes (an
    error): no barrier, so that the peers still in a collective fail at once on the closed
    connections instead of waiting for the process-group timeout."""
    if info.enabled and dist.is_initialized():
        if sync:
            try:
                barrier(info)
            except Exception:  # noqa: BLE001 - a peer already gone: tear down anyway
                pass
        dist.destroy_process_group()
