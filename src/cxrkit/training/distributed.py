"""Data-parallel training with ``torch.distributed`` (DDP): one process per GPU, or several CPU processes.

``torchrun`` starts the processes and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; cxrkit reads
them, joins the process group (NCCL on GPUs, gloo on CPUs), and every process trains on its share of
each batch. ``--batch-size`` stays the global batch: with N processes each takes every N-th image of it,
so the number of optimiser steps, the learning-rate schedule and the averaged gradient are those of a
single process (batch-norm statistics are per process, the one difference). Process 0 alone validates,
writes files and decides early stopping, and tells the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank, world size and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this is process 0, the one that validates and writes the run folder."""
        return self.rank == 0

    def share(self, batch: list[int]) -> list[int]:
        """This process's images of a global batch."""
        return batch[self.rank :: self.world]

    def broadcast(self, values: list) -> list:
        """Process 0's ``values`` on every process (a no-op for a single process)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        box = list(values)
        dist.broadcast_object_list(box, src=0)
        return box

    def barrier(self) -> None:
        """Wait for every process."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the process group ``torchrun`` prepared, or describe a single process when there is none.

    Each process uses GPU ``LOCAL_RANK`` when CUDA is available (NCCL backend), the CPU otherwise (gloo);
    ``device="cpu"`` keeps to the CPU on a GPU machine and ``"cuda"`` refuses to start without a GPU.
    """
    from cxrkit.models.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = resolve_device(device)  # a ValueError when CUDA is asked for and absent
    cuda = wanted.type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    # Several processes take one GPU each by LOCAL_RANK; a single process takes the one asked for.
    device = torch.device(f"cuda:{local}") if cuda and world > 1 else wanted
    if world <= 1:
        return Distributed(0, 1, device)
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def teardown_distributed(ctx: Distributed) -> None:
    """Leave the process group at the end of training."""
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
