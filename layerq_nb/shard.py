"""Data parallel: the blocks this process handles. Process `rank` of `world_size` takes every
world_size-th block (rank, rank + world_size, ...); reducer sums are then all-reduced (`tape.all_reduce`),
so a score equals the single-process one."""
from __future__ import annotations

from .data import Blocks

__all__ = ["local_blocks"]


def local_blocks(blocks: Blocks) -> tuple[Blocks, list[int]]:
    """This process's blocks and their global indices (all of them outside torch.distributed)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        ids = list(range(rank, len(blocks), world))
        return blocks.subset(ids), ids
    return blocks, list(range(len(blocks)))
