"""Process groups and shards: the one place that knows about torchrun and `--shard K/N`.

Rules it relies on:
- torchrun is detected from its environment (RANK, WORLD_SIZE, LOCAL_RANK); a
  process started without them is a world of one and nothing here does any
  communication, so the single-process path is untouched.
- The backend is gloo on CPU and NCCL on CUDA, where each process takes the GPU
  cuda:LOCAL_RANK.
- A shard is written `K/N` with K counted from 1 (`--shard 1/2`, `--shard 2/2`),
  like SLURM's `$((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT`; under torchrun
  rank r is shard r+1 of WORLD_SIZE.
- A shard's items are a contiguous block of the whole list (`shard_slice`), the
  blocks in shard order make up the list again, so concatenating the shards'
  rows in shard order gives the single-process order.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.errors import UserError


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`; written 1-based as K/N."""
    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index + 1}/{self.count}"

    @property
    def name(self) -> str:
        """The shard's file name stem: '1-of-2'."""
        return f"{self.index + 1}-of-{self.count}"


def parse_shard(text: str, option: str = "--shard") -> Shard:
    """'K/N' (1 <= K <= N) -> Shard(K-1, N); UserError naming `option` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"{option} must be K/N with shard K counted from 1 (e.g. {option} 1/4), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"{option} {text}: K must be between 1 and N (shards are counted from 1), got K={k}, N={n}")
    return Shard(k - 1, n)


def shard_slice(n_items: int, shard: Shard) -> slice:
    """The contiguous block of `n_items` that `shard` takes: sizes differ by at most one,
    the first `n_items % count` shards holding the extra item."""
    base, extra = divmod(n_items, shard.count)
    start = shard.index * base + min(shard.index, extra)
    return slice(start, start + base + (shard.index < extra))


# --------------------------------------------------------------------------- the process group

@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)


def launched_world() -> World:
    """The world torchrun describes in the environment (a world of one without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun): {exc}") from None
    return World(rank, size, local)


def current_world() -> World:
    """The initialised process group's rank and size, else a world of one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), launched_world().local_rank)
    return World()


def process_device(device: str, world: World) -> str:
    """The device of this process: under torchrun on CUDA, cuda:LOCAL_RANK ('cuda' or 'auto' asked)."""
    if world.size > 1 and device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{world.local_rank}"
    return device


@contextmanager
def launched_group(device: str) -> Iterator[tuple[World, str]]:
    """Inside a torchrun launch with WORLD_SIZE > 1, an initialised process group (gloo on CPU,
    NCCL on CUDA) for the body, destroyed after; yields (world, this process's device).
    Outside torchrun: (World(), device) and no group."""
    world = launched_world()
    if world.size <= 1:
        yield World(), device
        return
    import torch
    import torch.distributed as dist

    from pipeline.train.runner import resolve_device

    device = resolve_device(process_device(device, world))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend=backend)
    try:
        yield current_world(), device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a world of one)."""
    import torch.distributed as dist

    if current_world().size > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (itself in a world of one)."""
    import torch.distributed as dist

    if current_world().size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values, device: str = "cpu"):
    """The element-wise sum over ranks of a float64 list or tensor, as a float64 CPU tensor."""
    import torch
    import torch.distributed as dist

    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if current_world().size > 1:
        on = t.to(device)
        dist.all_reduce(on, op=dist.ReduceOp.SUM)
        t = on.cpu()
    return t
