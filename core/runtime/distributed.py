"""Running one evaluation on many processes: `torchrun --nproc_per_node N main.py evaluate ...`.

Work items (images, or ROAR's method x fraction jobs) are dealt out round-robin by their index,
every item carries its own seed, and rank 0 puts the gathered results back in index order, so the
outcome does not depend on how many processes ran it. Without torchrun's environment every helper
here is the trivial single-process version. NCCL links the ranks on CUDA, gloo on CPUs.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.errors import DeviceError
from core.runtime.device import resolve_device


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Context(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def setup(device: str = "auto") -> Context:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); pick this rank's device
    (cuda:LOCAL_RANK when CUDA is used)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"rank {rank} wants cuda:{local_rank} but only "
                              f"{torch.cuda.device_count()} GPUs are visible")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        kwargs = {"device_id": chosen} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return Context(rank=rank, world=world, local_rank=local_rank, device=chosen)


def teardown(ctx: Context) -> None:
    """Leave the process group together: a rank that tore its connections down while another
    still held them aborted now and then under load (gloo: "terminate called without an active
    exception")."""
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(count: int, ctx: Context) -> list[int]:
    """The item indices this rank handles: every world-th one, starting at its rank."""
    return list(range(ctx.rank, count, ctx.world))


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def broadcast(obj, ctx: Context):
    """Rank 0's `obj` on every rank."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, ctx: Context) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    if not ctx.active:
        return [obj]
    parts = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def gather_indexed(pairs: list[tuple[int, object]], ctx: Context) -> list | None:
    """Merge (index, result) pairs from all ranks into one list ordered by index, on rank 0."""
    parts = gather(pairs, ctx)
    if parts is None:
        return None
    merged = sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])
    return [value for _, value in merged]


def all_ok(ok: bool, ctx: Context) -> bool:
    """True on every rank only if `ok` is True on every rank (to stop all ranks together)."""
    if not ctx.active:
        return ok
    flag = torch.tensor([1 if ok else 0], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
